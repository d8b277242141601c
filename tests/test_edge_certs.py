"""Lab CA and per-name certificates: files, modes, a real TLS handshake."""
from __future__ import annotations

import ssl
import stat

import pytest
from cryptography import x509

from edge.certs import CertAuthority, CertError, CertStore, valid_dns_name


def _mode(p):
    return stat.S_IMODE(p.stat().st_mode)


def test_ca_create_writes_key_0600_and_refuses_overwrite(tmp_path):
    ca = CertAuthority.create(tmp_path / "ca")
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600
    assert _mode(tmp_path / "ca" / "ca.pem") == 0o644
    with pytest.raises(CertError):
        CertAuthority.create(tmp_path / "ca")
    again = CertAuthority.load(tmp_path / "ca")
    assert again.cert == ca.cert


def test_load_missing_ca_names_the_command(tmp_path):
    with pytest.raises(CertError, match="gslb edge ca init"):
        CertAuthority.load(tmp_path / "nope")


def test_issued_cert_has_san_and_verifies_in_a_handshake(tmp_path):
    ca = CertAuthority.create(tmp_path / "ca")
    store = CertStore(ca, tmp_path / "certs")
    server = store.context("demo.app.lab.test")
    cert_path, key_path = store.ensure(("demo.app.lab.test",))
    assert _mode(key_path) == 0o600
    leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["demo.app.lab.test"]

    client = ssl.create_default_context(cafile=str(ca.cert_path))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname="demo.app.lab.test")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for obj in (c, s):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    c.do_handshake()
    assert c.version() in ("TLSv1.2", "TLSv1.3")


def test_tls11_client_is_refused(tmp_path):
    ctx = CertStore(CertAuthority.create(tmp_path / "ca"), tmp_path / "c").context("a.example")
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_second_store_reuses_cert_on_disk(tmp_path):
    ca = CertAuthority.create(tmp_path / "ca")
    p1, _ = CertStore(ca, tmp_path / "c").ensure(("a.example",))
    first = p1.read_bytes()
    p2, _ = CertStore(ca, tmp_path / "c").ensure(("a.example",))
    assert p2.read_bytes() == first


@pytest.mark.parametrize("name", ["", "../etc/passwd", "a..b", "-a.example", "a_b.example", "x" * 64 + ".e"])
def test_bad_names_are_refused(tmp_path, name):
    assert not valid_dns_name(name)
    store = CertStore(CertAuthority.create(tmp_path / "ca"), tmp_path / "c")
    with pytest.raises(CertError):
        store.ensure((name,))


def test_concurrent_first_use_of_a_name_yields_one_usable_certificate(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = CertStore(CertAuthority.create(tmp_path / "ca"), tmp_path / "c")
    with ThreadPoolExecutor(8) as pool:
        ctxs = list(pool.map(lambda _: store.context("race.example", ("http/1.1",)), range(16)))
    assert all(c is ctxs[0] for c in ctxs)
    assert store.cached(("race.example",), ("http/1.1",)) is ctxs[0]
    assert store.cached(("other.example",)) is None


def test_cert_from_a_previous_ca_with_the_same_name_is_issued_again(tmp_path):
    old = CertAuthority.create(tmp_path / "ca1")
    p, _ = CertStore(old, tmp_path / "c").ensure(("a.example",))
    first = p.read_bytes()
    new = CertAuthority.create(tmp_path / "ca2")  # same subject, new key
    p2, _ = CertStore(new, tmp_path / "c").ensure(("a.example",))
    assert p2.read_bytes() != first
    x509.load_pem_x509_certificate(p2.read_bytes()).verify_directly_issued_by(new.cert)
