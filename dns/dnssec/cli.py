"""`gslb dns keygen`, `gslb dns ds`, `gslb dns dump`: the DNSSEC commands.

Owns only their command lines. Private keys are written 0600 and never
printed: every command prints public data (DNSKEY, DS, signed records).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

KEYGEN_EPILOG = """\
examples:
  gslb dns keygen --out keys/lab.test.csk.pem --zone lab.test          # ECDSA P-256 CSK
  gslb dns keygen --out keys/lab.test.ksk.pem --zone lab.test --role ksk
  gslb dns keygen --out keys/lab.test.zsk.pem --role zsk --algorithm ed25519

then list it in the DNS configuration (docs/dnssec.md):
  [[dnssec.keys]]
  file = "keys/lab.test.csk.pem"
  role = "csk"
"""

DS_EPILOG = """\
examples:
  gslb dns ds --config examples/dns.toml                  # DS records for the parent zone
  gslb dns ds --config examples/dns.toml --format dnskey  # the DNSKEYs (a validator's trust anchor)
  gslb dns ds --config examples/dns.toml --format unbound # trust-anchor: lines for unbound.conf
  gslb dns ds --config examples/dns.toml --format delv    # a trust-anchors {} file for delv -a
"""

DUMP_EPILOG = """\
examples:
  gslb dns dump --config examples/dns.toml > lab.test.signed
  ldns-verify-zone -k anchor.ds lab.test.signed

Every RRset of the zone (GSLB names with the answer for --client), signed,
with a plain NSEC chain (a dump is a whole zone: its NSECs link its names).
"""


def add_parsers(sub: Any) -> None:
    pk = sub.add_parser("keygen", help="generate a DNSSEC signing key (file mode 0600)",
                        description="Generate a DNSSEC private key (PKCS#8 PEM, mode 0600) and print "
                                    "its DNSKEY (and DS with --zone).",
                        epilog=KEYGEN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pk.add_argument("--out", metavar="FILE", required=True, help="where to write the key (must not exist)")
    pk.add_argument("--algorithm", default="ecdsap256sha256",
                    choices=["ecdsap256sha256", "13", "ed25519", "15"],
                    help="13 ECDSAP256SHA256 (default, RFC 6605) or 15 ED25519 (RFC 8080)")
    pk.add_argument("--role", default="csk", choices=["csk", "ksk", "zsk"],
                    help="decides the DNSKEY flags printed (257 for csk/ksk, 256 for zsk)")
    pk.add_argument("--zone", metavar="NAME", help="print the DS for this zone too")
    pk.set_defaults(func=_keygen)

    pd = sub.add_parser("ds", help="print the DS (or DNSKEY, trust anchor) of the configured keys",
                        description="Print the DS records the parent zone needs for the configured "
                                    "csk/ksk keys, or the DNSKEYs as trust anchors.",
                        epilog=DS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pd.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    pd.add_argument("--format", default="ds", choices=["ds", "dnskey", "unbound", "delv"])
    pd.add_argument("--all", action="store_true",
                    help="every configured key, not only the csk/ksk ones (secure entry points)")
    pd.set_defaults(func=_ds)

    pz = sub.add_parser("dump", help="print the signed zone (for ldns-verify-zone)",
                        description="Print the zone as a signed zone file.",
                        epilog=DUMP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pz.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    pz.add_argument("--client", default="127.0.0.1", help="the client GSLB answers are made for")
    pz.add_argument("--geoip-db", metavar="PATH", default=None)
    pz.set_defaults(func=_dump)


def _keygen(args: argparse.Namespace) -> int:
    from dns.dnssec.keys import ALGORITHM_CODES, generate_key, save_key
    from dns.wire import name_from_text
    zone = (args.zone.rstrip(".") + ".") if args.zone else None
    if zone is not None:
        try:
            name_from_text(zone)
        except (ValueError, UnicodeError) as exc:
            print(f"gslb dns keygen: --zone {args.zone!r}: {exc}", file=sys.stderr)
            return 2
    key = generate_key(ALGORITHM_CODES[args.algorithm], args.role)
    try:
        save_key(key, args.out)
    except OSError as exc:
        print(f"gslb dns keygen: {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    owner = zone or "@"
    print(f"; {args.out}: algorithm {key.algorithm}, role {args.role}, key tag {key.key_tag}")
    print(f"{owner} IN DNSKEY {key.dnskey_text()}")
    if zone and args.role != "zsk":
        print(f"{zone} IN DS {key.ds_text(name_from_text(zone))}")
    return 0


def _signer(args: argparse.Namespace) -> tuple[Any, Any] | None:
    from dns.cli import _load
    from dns.dnssec.signer import build_signer
    from dns.wire import name_from_text
    from dns.config import ConfigError
    cfg = _load(args)
    if cfg is None:
        return None
    try:
        signer = build_signer(cfg, name_from_text(cfg.zone.name))
    except (ConfigError, ValueError) as exc:
        print(f"gslb dns: {exc}", file=sys.stderr)
        return None
    if signer is None:
        print(f"gslb dns: {cfg.path}: dnssec.keys: signing is off (no [[dnssec.keys]])", file=sys.stderr)
        return None
    return cfg, signer


def _ds(args: argparse.Namespace) -> int:
    from dns.wire import name_from_text
    got = _signer(args)
    if got is None:
        return 2
    cfg, signer = got
    zone = cfg.zone.name
    owner = name_from_text(zone)
    keys = [k for k in signer.keys if args.all or k.role in ("csk", "ksk")]
    lines = []
    for k in keys:
        if args.format == "ds":
            lines.append(f"{zone} IN DS {k.ds_text(owner)}")
        elif args.format == "dnskey":
            lines.append(f"{zone} {signer.dnskey_ttl} IN DNSKEY {k.dnskey_text()}")
        elif args.format == "unbound":
            lines.append(f'trust-anchor: "{zone} DS {k.ds_text(owner)}"')
        else:
            d = k.ds_text(owner).split()
            lines.append(f'    "{zone}" static-ds {d[0]} {d[1]} {d[2]} "{d[3]}";')
    if args.format == "delv":
        lines = ["trust-anchors {", *lines, "};"]
    print("\n".join(lines))
    return 0


def _dump(args: argparse.Namespace) -> int:
    from dns.dnssec.zonefile import signed_zone_text
    got = _signer(args)
    if got is None:
        return 2
    cfg, signer = got
    from dns.engine import Engine
    try:
        engine = Engine.from_config(cfg, os.path.abspath(args.geoip_db) if args.geoip_db else None,
                                    signer=signer)
    except Exception as exc:  # noqa: BLE001 - a bad database: say what
        print(f"gslb dns: {exc}", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(signed_zone_text(engine, args.client, time.time()))
    finally:
        engine.close()
    return 0
