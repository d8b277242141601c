import ipaddress
import os
from pathlib import Path

import geoip2.database
import maxminddb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import geo.build
from geo.build import BuildError, build_mmdb, record_for
from geo.centroids import CENTROIDS
from geo.mmdb import GeoDatabase
from geo.routing import CONTINENTS
from geo.table import GeoTable, TableEntry, load_table, parse_table

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "geo-table.toml"


@pytest.fixture(scope="module")
def lab_db(tmp_path_factory):
    out = tmp_path_factory.mktemp("geo") / "lab.mmdb"
    build_mmdb(load_table(EXAMPLE), out)
    return out


def test_example_table_builds_a_geoip2_city_database_the_official_reader_accepts(lab_db):
    with geoip2.database.Reader(str(lab_db)) as r:
        assert r.metadata().database_type == "GeoIP2-City"
        c = r.city("198.19.5.10")
        assert (c.city.name, c.country.iso_code, c.continent.code) == ("Tokyo", "JP", "AS")
        assert c.continent.name == "Asia"
        assert (c.location.latitude, c.location.longitude) == (35.6762, 139.6503)
        assert str(c.traits.network) == "198.19.5.0/24"
        c6 = r.city("fd7a:5e1b:c00:800::1234")
        assert (c6.city.name, c6.country.iso_code) == ("San Jose", "US")
        assert str(c6.traits.network) == "fd7a:5e1b:c00:800::/56"
        cn = r.city("198.19.30.200")
        assert cn.country.iso_code == "CN" and cn.city.name is None and cn.location.latitude is None


@pytest.mark.parametrize("address", ["198.19.1.1", "198.19.8.255", "198.19.30.7", "198.19.99.1",
                                     "10.0.0.1", "fd7a:5e1b:c00:2300::1", "2001:db8::1"])
def test_c_and_pure_python_readers_agree(lab_db, address):
    # libmaxminddb (the reference C reader) and the pure-Python decoder must
    # read the file the same way: a cheap check that it follows the format.
    with maxminddb.open_database(str(lab_db), maxminddb.MODE_MMAP_EXT) as c, \
            maxminddb.open_database(str(lab_db), maxminddb.MODE_FILE) as py:
        assert c.get_with_prefix_len(address) == py.get_with_prefix_len(address)


def test_ipv4_is_also_reachable_as_ipv4_mapped_ipv6_in_raw_readers(lab_db):
    with maxminddb.open_database(str(lab_db)) as r:
        rec, plen = r.get_with_prefix_len("::ffff:198.19.3.9")
        assert rec["city"]["names"]["en"] == "Frankfurt"
        assert plen == 96 + 24


def test_unlisted_addresses_have_no_record(lab_db):
    with GeoDatabase(lab_db) as db:
        assert db.lookup("198.19.99.1").location is None
        assert db.lookup("8.8.8.8").location is None


NESTED_WIDE_FIRST = """\
[[network]]
network = "198.19.0.0/16"
country = "DE"
continent = "EU"

[[network]]
network = "198.19.128.0/24"
country = "JP"
continent = "AS"
"""
NESTED_NARROW_FIRST = """\
[[network]]
network = "198.19.128.0/24"
country = "JP"
continent = "AS"

[[network]]
network = "198.19.0.0/16"
country = "DE"
continent = "EU"
"""


@pytest.mark.parametrize("text", [NESTED_WIDE_FIRST, NESTED_NARROW_FIRST])
def test_nested_network_carves_a_hole_whatever_the_table_order(tmp_path, text):
    out = tmp_path / "n.mmdb"
    build_mmdb(parse_table(text, "n.toml"), out)
    with GeoDatabase(out) as db:
        assert db.lookup("198.19.128.77").location.country == "JP"
        assert db.lookup("198.19.128.77").prefix_len == 24
        assert db.lookup("198.19.127.255").location.country == "DE"
        assert db.lookup("198.19.129.0").location.country == "DE"
        assert db.lookup("198.19.0.1").location.country == "DE"
        assert db.lookup("198.19.0.1").prefix_len == 17  # the /16 minus the hole's half
        assert db.lookup("198.20.0.1").location is None


def test_source_date_epoch_makes_builds_byte_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764288000")
    table = load_table(EXAMPLE)
    a, b = tmp_path / "a.mmdb", tmp_path / "b.mmdb"
    assert build_mmdb(table, a).build_epoch == 1764288000
    build_mmdb(table, b)
    assert a.read_bytes() == b.read_bytes()
    with GeoDatabase(a) as db:
        assert db.info.build_epoch == 1764288000


def test_bad_source_date_epoch_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(BuildError, match="SOURCE_DATE_EPOCH"):
        build_mmdb(load_table(EXAMPLE), tmp_path / "x.mmdb")
    assert list(tmp_path.iterdir()) == []


def test_source_date_epoch_zero_is_refused_with_the_reason(tmp_path, monkeypatch):
    # Found by the property test below: mmdb-writer encodes build_epoch 0 in a
    # way libmaxminddb cannot open; the verification step caught it.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    with pytest.raises(BuildError, match="must be at least 1"):
        build_mmdb(load_table(EXAMPLE), tmp_path / "x.mmdb")
    assert list(tmp_path.iterdir()) == []


def test_failed_verification_leaves_existing_database_and_no_temp_file(tmp_path, monkeypatch):
    out = tmp_path / "lab.mmdb"
    out.write_bytes(b"old database")

    def broken(path, table):
        raise BuildError("verification failed: simulated")

    monkeypatch.setattr(geo.build, "_verify", broken)
    with pytest.raises(BuildError, match="simulated"):
        build_mmdb(load_table(EXAMPLE), out)
    assert out.read_bytes() == b"old database"
    assert [p.name for p in tmp_path.iterdir()] == ["lab.mmdb"]


def test_verification_catches_a_database_that_reads_back_wrong(tmp_path, monkeypatch):
    # A writer that puts every network's record under the wrong place must not
    # replace the target: simulate by corrupting one record before writing.
    real = geo.build.record_for

    def wrong(entry):
        rec = real(entry)
        if entry.city == "Tokyo":
            rec["country"] = {"iso_code": "KR"}
        return rec

    monkeypatch.setattr(geo.build, "record_for", wrong)
    out = tmp_path / "lab.mmdb"
    with pytest.raises(BuildError, match="verification failed: 198.19.5.0"):
        build_mmdb(load_table(EXAMPLE), out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_record_layout_is_geoip2_city():
    entry = load_table(EXAMPLE).entries[0]
    assert record_for(entry) == {
        "continent": {"code": "AS", "names": {"en": "Asia"}},
        "country": {"iso_code": "SG"},
        "registered_country": {"iso_code": "SG"},
        "city": {"names": {"en": "Singapore"}},
        "location": {"latitude": 1.2897, "longitude": 103.8501},
    }


def test_output_file_is_world_readable(lab_db):
    assert os.stat(lab_db).st_mode & 0o777 == 0o644



def test_package_level_build_mmdb_takes_paths_and_returns_networks_written(tmp_path):
    import geo
    out = tmp_path / "lab.mmdb"
    assert geo.build_mmdb(str(EXAMPLE), str(out)) == 23
    with GeoDatabase(out) as db:
        assert db.lookup("198.19.4.4").city == "Mumbai"


networks_v4 = st.builds(lambda n, p: ipaddress.ip_network((n >> (32 - p) << (32 - p), p)),
                        st.integers(0, 2**32 - 1), st.integers(4, 32))
networks_v6 = st.builds(lambda n, p: ipaddress.ip_network((n >> (128 - p) << (128 - p), p)),
                        st.integers(2**125, 2**128 - 1), st.integers(8, 128))  # 2000::/3 and up
places = st.tuples(st.sampled_from(sorted(CENTROIDS)), st.sampled_from(sorted(CONTINENTS)),
                   st.one_of(st.none(), st.tuples(st.floats(-90, 90), st.floats(-180, 180))))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.one_of(networks_v4, networks_v6), places), min_size=1, max_size=12,
                unique_by=lambda t: t[0]))
def test_any_valid_table_builds_and_reads_back_most_specific_first(tmp_path_factory, rows):
    entries = tuple(TableEntry(networks=(net,), country=c, continent=k,
                               lat=None if ll is None else ll[0], lon=None if ll is None else ll[1])
                    for net, (c, k, ll) in rows)
    table = GeoTable("prop.toml", entries)
    out = tmp_path_factory.mktemp("prop") / "p.mmdb"
    build_mmdb(table, out, build_epoch=1)
    with GeoDatabase(out) as db:
        for net, _ in rows:
            for addr in (net.network_address, net.broadcast_address):
                want = max((r for r in rows if r[0].version == addr.version and addr in r[0]),
                           key=lambda r: r[0].prefixlen)
                got = db.lookup(addr)
                assert got.country == want[1][0] and got.continent == want[1][1]
                assert got.prefix_len >= want[0].prefixlen
