"""bench/nginx.py: the peers' nginx configurations are valid for the nginx installed (nginx -t)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from _tools import need_tools

from bench.nginx import STREAM_MODULE, stream_relay_conf, tls_proxy_conf, upstream_conf, write_bodies

needs_nginx = need_tools("nginx")


def _check(tmp_path, text):
    (tmp_path / "tmp").mkdir(exist_ok=True)
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    r = subprocess.run(["nginx", "-t", "-q", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "e.log")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def cert(tmp_path):
    from edge.certs import CertAuthority

    leaf = CertAuthority.create(tmp_path / "ca").issue(["demo.app.lab.test"])
    (tmp_path / "c.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "k.pem").write_bytes(leaf.key_pem)
    return str(tmp_path / "c.pem"), str(tmp_path / "k.pem")


def test_bodies_are_100_bytes_and_64_kib(tmp_path):
    write_bodies(str(tmp_path))
    assert (tmp_path / "small").stat().st_size == 100
    assert (tmp_path / "big").stat().st_size == 65536


def test_proxy_keeps_upstream_connections_alive_and_sets_forwarded_headers(tmp_path):
    text = tls_proxy_conf(str(tmp_path), 8443, 8080, "c.pem", "k.pem", 2, "demo.app.lab.test")
    assert "worker_processes 2;" in text and "keepalive 128;" in text
    assert 'proxy_set_header Connection "";' in text and "proxy_http_version 1.1;" in text
    assert "X-Forwarded-For" in text and "access_log off;" in text


@needs_nginx
def test_upstream_and_proxy_configs_pass_nginx_t(tmp_path, cert):
    write_bodies(str(tmp_path / "www"))
    _check(tmp_path, upstream_conf(str(tmp_path), 18080, str(tmp_path / "www")))
    _check(tmp_path, tls_proxy_conf(str(tmp_path), 18443, 18080, cert[0], cert[1], 1, "demo.app.lab.test"))


@need_tools(STREAM_MODULE)
@needs_nginx
def test_stream_relays_pass_nginx_t(tmp_path, cert):
    _check(tmp_path, stream_relay_conf(str(tmp_path), 19002, 19000, listen_tls=cert))
    _check(tmp_path, stream_relay_conf(str(tmp_path), 19001, 19002, connect_tls=True))
