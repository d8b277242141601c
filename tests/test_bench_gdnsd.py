"""bench/gdnsd.py: gdnsd 3.x configuration generated from our DNS config (the bench's DNS peer)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from _tools import need_tools

from bench.gdnsd import caa_generic, country_continents_from_mmdb, gdnsd_files
from geo import build_mmdb, great_circle_km
from dns.config import load_dns_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DNS_TOML = os.path.join(REPO, "examples", "dns.toml")
GEO_TABLE = os.path.join(REPO, "examples", "geo-table.toml")


@pytest.fixture(scope="module")
def mmdb(tmp_path_factory):
    out = tmp_path_factory.mktemp("mmdb") / "lab.mmdb"
    build_mmdb(GEO_TABLE, out)
    return str(out)


@pytest.fixture(scope="module")
def cfg():
    return load_dns_config(DNS_TOML)


def _files(cfg, mmdb, tmp=None):
    return gdnsd_files(cfg, mmdb_path=mmdb, listen=["127.0.0.1:5301"],
                       country_continent=country_continents_from_mmdb(mmdb),
                       run_dir=str(tmp / "run") if tmp else None, state_dir=str(tmp / "state") if tmp else None)


def test_datacenters_follow_default_order_with_every_pop_coordinates(cfg, mmdb):
    f = _files(cfg, mmdb)
    assert "datacenters => [ us, eu, jp, ap, in, us-cal-1, sa, au ]" in f.config
    for p in cfg.pops:
        assert f"{p.id} => [ {p.latitude!r}, {p.longitude!r} ]" in f.config
    assert f"auto_dc_limit => {len(cfg.pops)}" in f.config
    assert f'geoip2_db => "{mmdb}"' in f.config


def test_country_override_nests_under_the_continent_the_mmdb_records(cfg, mmdb):
    assert country_continents_from_mmdb(mmdb)["CN"] == "AS"
    f = _files(cfg, mmdb)
    assert "AS => {\n            CN => [ jp, ap, us, eu, in, us-cal-1, sa, au ]" in f.config
    assert "AN => [ au, sa, us, eu, jp, ap, in, us-cal-1 ]" in f.config


def test_country_without_networks_in_the_mmdb_is_noted_not_guessed(cfg, mmdb):
    f = gdnsd_files(cfg, mmdb_path=mmdb, listen=["127.0.0.1:5301"], country_continent={})
    assert "CN =>" not in f.config
    assert any("routing.country.CN" in n for n in f.notes)


def test_each_pop_is_a_weighted_resource_answering_groups_of_addresses_per_answer(cfg, mmdb):
    f = _files(cfg, mmdb)
    jp = cfg.pop("jp")
    block = f.config.split("pop-jp => {", 1)[1].split("pop-sa => {", 1)[0]
    assert "multi => false" in block
    assert f"g0 => {{\n          a0 => [ {jp.ipv4[0]}, 1 ]\n          a1 => [ {jp.ipv4[1]}, 1 ]" in block
    assert f"a1 => [ {jp.ipv6[3]}, 1 ]" in block
    assert "jp => %weighted!pop-jp" in f.config


def test_zone_has_soa_ns_glue_dyna_names_and_static_records(cfg, mmdb):
    z = _files(cfg, mmdb).zone
    assert "@ 3600 SOA ns1.lab.test. hostmaster.lab.test. ( 2026112801 3600 600 1209600 30 )" in z
    assert "ns1 3600 A 127.0.0.1" in z and "ns1 3600 AAAA ::1" in z
    assert "*.app 30/30 DYNA geoip!edge" in z
    assert "jp.connect 30/30 DYNA geoip!edge/jp" in z
    assert "status 30/30 DYNA geoip!edge/eu" in z
    assert "www 300 CNAME demo.app.lab.test." in z
    assert '@ 300 TXT "gslb-edge lab zone"' in z
    assert "@ 300 TYPE257 \\# " in z


def test_caa_generic_rdata_follows_rfc8659_layout():
    assert caa_generic('0 issue "ca.example"') == "\\# 17 0005697373756563612e6578616d706c65"


needs_gdnsd = need_tools("gdnsd", "gdnsd_geoip_test")


def _write(tmp_path, f):
    (tmp_path / "zones").mkdir()
    (tmp_path / "config").write_text(f.config)
    (tmp_path / "zones" / f.zone_name).write_text(f.zone)


@needs_gdnsd
def test_gdnsd_accepts_the_generated_config(cfg, mmdb, tmp_path):
    _write(tmp_path, _files(cfg, mmdb, tmp_path))
    r = subprocess.run(["gdnsd", "-c", str(tmp_path), "checkconf"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@needs_gdnsd
@pytest.mark.parametrize("client,city_coords", [
    ("198.19.5.10", (35.6762, 139.6503)),     # Tokyo
    ("198.19.21.10", (-26.2041, 28.0473)),    # Johannesburg
    ("198.19.22.10", (51.5072, -0.1276)),     # London
    ("198.19.23.10", (43.6532, -79.3832)),    # Toronto
    ("fd7a:5e1b:c00:800::1", (37.3382, -121.8863)),  # San Jose
])
def test_gdnsd_ranks_nearest_pop_first_like_great_circle_distance(cfg, mmdb, tmp_path, client, city_coords):
    _write(tmp_path, _files(cfg, mmdb, tmp_path))
    r = subprocess.run(["gdnsd_geoip_test", "-c", str(tmp_path), "pops", client], capture_output=True,
                       text=True, timeout=30)
    first = r.stdout.split("=>")[-1].split(",")[0].strip()
    nearest = min(cfg.pops, key=lambda p: great_circle_km(*city_coords, p.latitude, p.longitude)).id
    assert first == nearest, r.stdout + r.stderr


@needs_gdnsd
@pytest.mark.parametrize("client,first", [("198.19.30.10", "jp"), ("203.0.113.9", "us")])
def test_gdnsd_applies_country_override_and_default_order(cfg, mmdb, tmp_path, client, first):
    _write(tmp_path, _files(cfg, mmdb, tmp_path))
    r = subprocess.run(["gdnsd_geoip_test", "-c", str(tmp_path), "pops", client], capture_output=True,
                       text=True, timeout=30)
    assert r.stdout.split("=>")[-1].split(",")[0].strip() == first, r.stdout + r.stderr
