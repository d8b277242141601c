"""`gslb dns keygen`, `ds`, `dump`: what they print and what they refuse."""
from __future__ import annotations

import os
import shutil
import stat

from dns.dnssec.keys import load_key
from dns.wire import name_from_text
from gslb.cli import main
from tests.conftest import EXAMPLES


def signed_dir(tmp_path, lab_mmdb, roles=("csk",)):
    shutil.copy(os.path.join(EXAMPLES, "dns.toml"), tmp_path / "dns.toml")
    shutil.copy(lab_mmdb, tmp_path / "lab.mmdb")
    text = (tmp_path / "dns.toml").read_text()
    for i, role in enumerate(roles):
        assert main(["dns", "keygen", "--out", str(tmp_path / f"k{i}.pem"), "--role", role]) == 0
        text += f'\n[[dnssec.keys]]\nfile = "k{i}.pem"\nrole = "{role}"\n'
    (tmp_path / "dns.toml").write_text(text)
    return str(tmp_path / "dns.toml")


def test_keygen_writes_0600_prints_dnskey_and_ds_never_the_private_key(tmp_path, capsys):
    out = tmp_path / "k.pem"
    assert main(["dns", "keygen", "--out", str(out), "--zone", "lab.test"]) == 0
    printed = capsys.readouterr().out
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    key = load_key(str(out))
    assert f"lab.test. IN DNSKEY {key.dnskey_text()}" in printed
    assert f"lab.test. IN DS {key.ds_text(name_from_text('lab.test.'))}" in printed
    assert "PRIVATE" not in printed and out.read_text().split("\n")[1] not in printed
    # Never overwrites a key.
    assert main(["dns", "keygen", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_keygen_ed25519_zsk_and_bad_zone(tmp_path, capsys):
    assert main(["dns", "keygen", "--out", str(tmp_path / "z.pem"), "--role", "zsk",
                 "--algorithm", "ed25519", "--zone", "lab.test"]) == 0
    out = capsys.readouterr().out
    assert "DNSKEY 256 3 15 " in out and " DS " not in out  # a ZSK has no DS
    assert main(["dns", "keygen", "--out", str(tmp_path / "y.pem"), "--zone", "a..b"]) == 2
    assert not (tmp_path / "y.pem").exists()


def test_ds_formats(tmp_path, lab_mmdb, capsys):
    config = signed_dir(tmp_path, lab_mmdb, ("ksk", "zsk"))
    capsys.readouterr()
    ksk = load_key(str(tmp_path / "k0.pem"), "ksk")
    ds = ksk.ds_text(name_from_text("lab.test."))
    assert main(["dns", "ds", "--config", config]) == 0
    assert capsys.readouterr().out.strip() == f"lab.test. IN DS {ds}"  # the KSK only
    assert main(["dns", "ds", "--config", config, "--format", "unbound"]) == 0
    assert capsys.readouterr().out.strip() == f'trust-anchor: "lab.test. DS {ds}"'
    assert main(["dns", "ds", "--config", config, "--format", "dnskey", "--all"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["dns", "ds", "--config", config, "--format", "delv"]) == 0
    assert capsys.readouterr().out.startswith("trust-anchors {\n    \"lab.test.\" static-ds ")


def test_ds_without_keys_says_signing_is_off(example_config_dir, capsys):
    assert main(["dns", "ds", "--config", os.path.join(example_config_dir, "dns.toml")]) == 2
    assert "signing is off" in capsys.readouterr().err


def test_dump_lists_every_rrset_signed_with_an_nsec_chain(tmp_path, lab_mmdb, capsys):
    config = signed_dir(tmp_path, lab_mmdb)
    assert main(["dns", "dump", "--config", config]) == 0
    lines = [ln.split("\t") for ln in capsys.readouterr().out.splitlines() if "\t" in ln]
    types = {}
    for owner, _ttl, _cls, rtype, _rd in lines:
        types.setdefault(owner, []).append(rtype)
    assert {"TYPE6", "TYPE2", "TYPE48", "TYPE47"} <= set(types["lab.test."])
    assert "TYPE1" in types["*.app.lab.test."] and "TYPE28" in types["*.app.lab.test."]
    for owner, ts in types.items():
        assert ts.count("TYPE47") == 1                       # one NSEC per name
        assert ts.count("TYPE46") == len(set(ts) - {"TYPE46"})  # one RRSIG per RRset (one key)
