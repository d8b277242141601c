import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from geo.errors import GeoDatabaseError
from geo.location import Location
from geo.mmdb import GeoDatabase, location_from_record, parse_address

# A real (2018) GeoLite2-City database, from the test dependency maxminddb-geolite2.
from geolite2 import geolite2

GEOLITE = geolite2.filename


@pytest.fixture(scope="module")
def real_db():
    with GeoDatabase(GEOLITE) as db:
        yield db


def test_real_geolite2_city_locates_known_addresses(real_db):
    # Values from the 2018 GeoLite2-City snapshot shipped by maxminddb-geolite2.
    k = real_db.lookup("193.0.14.129")  # k.root-servers.net, RIPE NCC
    assert k.location.country == "NL" and k.location.continent == "EU"
    assert k.location.city == "Amsterdam"
    assert k.location.lat == pytest.approx(52.3735) and k.location.accuracy_km == 10
    assert k.prefix_len == 20 and str(k.network) == "193.0.0.0/20"
    g = real_db.lookup("2a00:1450:4001:80b::200e")
    assert g.location.country == "DE" and g.location.city == "Frankfurt am Main"
    assert g.network.version == 6 and g.prefix_len == 48


def test_ipv4_mapped_address_is_looked_up_as_ipv4(real_db):
    a = real_db.lookup("::ffff:8.8.8.8")
    assert a.address == ipaddress.IPv4Address("8.8.8.8")
    assert a.prefix_len == 19 and a.location.country == "US"
    assert a == real_db.lookup(ipaddress.IPv6Address("::ffff:8.8.8.8"))


def test_private_address_is_not_located_and_keeps_its_empty_network(real_db):
    loopback = real_db.lookup("127.0.0.1")
    assert loopback.location is None
    assert str(loopback.network) == "127.0.0.0/8"


def test_database_info_describes_the_file(real_db):
    assert real_db.info.database_type == "GeoLite2-City"
    assert real_db.info.ip_version == 6
    assert "en" in real_db.info.languages


def _write(path, database_type, ip_version=6, record=None, network="198.19.0.0/16"):
    w = MMDBWriter(ip_version=ip_version, database_type=database_type, languages=["en"],
                   description="test", ipv4_compatible=ip_version == 6)
    w.insert_network(IPSet([network]), record or {"country": {"iso_code": "DE"},
                                                   "continent": {"code": "EU"}})
    w.to_db_file(str(path))
    return path


def test_country_schema_database_is_accepted_and_located_at_the_country_centroid(tmp_path):
    p = _write(tmp_path / "c.mmdb", "GeoLite2-Country")
    with GeoDatabase(p) as db:
        located = db.lookup("198.19.7.7")
        assert located.location == Location(country="DE", continent="EU", lat=51.165691,
                                             lon=10.451526, source="country-centroid")
        assert located.source == "country-centroid"
        assert (located.country, located.latitude) == ("DE", 51.165691)


def test_country_without_known_centroid_has_no_coordinates():
    loc = location_from_record({"country": {"iso_code": "ZZ"}, "continent": {"code": "EU"}})
    assert loc == Location(country="ZZ", continent="EU") and loc.source == "none"


def test_asn_database_is_refused_at_open(tmp_path):
    p = _write(tmp_path / "asn.mmdb", "GeoLite2-ASN", record={"autonomous_system_number": 64500})
    with pytest.raises(GeoDatabaseError, match="not a GeoIP2 City or Country database"):
        GeoDatabase(p)


def test_ipv6_client_of_ipv4_only_database_is_unlocated_with_scope_zero(tmp_path):
    p = _write(tmp_path / "v4.mmdb", "GeoIP2-Country", ip_version=4)
    with GeoDatabase(p) as db:
        a = db.lookup("2001:db8::1")
        assert a.location is None and a.prefix_len == 0
        assert db.lookup("198.19.1.1").location.country == "DE"


def test_missing_and_corrupt_files_raise_typed_errors(tmp_path):
    with pytest.raises(GeoDatabaseError, match="no such file"):
        GeoDatabase(tmp_path / "missing.mmdb")
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"this is not a MaxMind DB" * 100)
    with pytest.raises(GeoDatabaseError, match="not a valid MaxMind DB file"):
        GeoDatabase(junk)


def test_parse_address_rejects_junk_and_unmaps():
    assert parse_address(" ::ffff:10.1.2.3 ") == ipaddress.IPv4Address("10.1.2.3")
    with pytest.raises(ValueError, match="not an IP address"):
        parse_address("10.1.2")


def test_registered_country_is_used_when_country_is_missing():
    loc = location_from_record({"registered_country": {"iso_code": "us"}, "continent": {"code": "NA"}})
    assert (loc.country, loc.continent, loc.source) == ("US", "NA", "country-centroid")


def test_out_of_range_coordinates_are_dropped_not_trusted():
    loc = location_from_record({"country": {"iso_code": "FR"},
                                "location": {"latitude": 123.0, "longitude": 2.0}})
    assert loc.source == "country-centroid" and loc.lat == 46.227638


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["country", "continent", "city", "location", "names", "en",
                                       "iso_code", "code", "latitude", "longitude",
                                       "accuracy_radius", "registered_country"]), children, max_size=4),
    max_leaves=20)


@given(json_values)
def test_malformed_records_never_raise(record):
    loc = location_from_record(record)
    assert loc is None or isinstance(loc, Location)


def test_addresses_of_one_network_share_one_decoded_location(real_db):
    a = real_db.lookup("193.0.14.129")
    b = real_db.lookup("193.0.0.1")
    assert a.prefix_len == b.prefix_len == 20
    assert a.location is b.location


class CountingReader:
    def __init__(self, reader):
        self.reader, self.calls = reader, 0

    def get_with_prefix_len(self, addr):
        self.calls += 1
        return self.reader.get_with_prefix_len(addr)

    def close(self):
        self.reader.close()


def test_memoised_network_answers_without_reading_the_database():
    with GeoDatabase(GEOLITE) as db:
        db._reader = CountingReader(db._reader)
        first = db.lookup("193.0.14.129")
        assert db._reader.calls == 1
        for addr in ("193.0.0.0", "193.0.15.255", "193.0.7.7"):
            again = db.lookup(addr)
            assert (again.prefix_len, again.location) == (first.prefix_len, first.location)
        assert db._reader.calls == 1
        outside = db.lookup("193.0.16.1")  # next /20: a different network, read again
        assert db._reader.calls == 2 and outside.network != first.network
        v6 = db.lookup("2a00:1450:4001:80b::200e")
        assert db.lookup("2a00:1450:4001:ffff::1").location is v6.location
        assert db._reader.calls == 3


def test_memo_never_changes_an_answer(real_db):
    import random
    rng = random.Random(7)
    addrs = [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(300)]
    addrs += [ipaddress.IPv4Address(int(a) ^ 0xFF) for a in addrs]  # neighbours share networks
    with GeoDatabase(GEOLITE, memo_size=0) as fresh:
        for a in addrs:
            m, f = real_db.lookup(a), fresh.lookup(a)
            assert (m.prefix_len, m.location) == (f.prefix_len, f.location), a


def test_memo_is_bounded(tmp_path):
    p = _write(tmp_path / "c.mmdb", "GeoLite2-Country")
    with GeoDatabase(p, memo_size=2) as db:
        for addr in ("198.19.0.1", "10.0.0.1", "172.16.0.1", "2001:db8::1", "8.8.8.8"):
            db.lookup(addr)
            assert db.memo_size() <= 2


def test_interface_names_geodb_locate_and_flat_fields(tmp_path):
    import geo
    p = _write(tmp_path / "c.mmdb", "GeoIP2-Country")
    with geo.GeoDB(str(p)) as db:
        assert db.metadata().database_type == "GeoIP2-Country" and db.path == str(p)
        hit = db.locate("::ffff:198.19.200.1")
        assert (hit.found, hit.country, hit.continent, hit.city) == (True, "DE", "EU", None)
        assert hit.source == "country-centroid" and hit.prefix_len == 16
        miss = db.locate("10.1.2.3")
        assert (miss.found, miss.country, miss.latitude, miss.source) == (False, None, None, "none")
    with pytest.raises(geo.GeoDBError):
        geo.GeoDB(str(tmp_path / "missing.mmdb"))


def test_real_database_point_is_source_city(real_db):
    assert real_db.lookup("193.0.14.129").source == "city"
