"""DNSSEC online signing for `gslb dns` (RFC 4033/4034/4035).

Owns the keys (`keys`: DNSKEY, key tag, DS, load/generate/save), the
canonical form and RRSIG construction (`records`, `signer`), and the denial
of existence (`denial`: RFC 9824 compact answers). Sans-IO apart from reading
and writing key files in `keys`: the signer is handed the time, never reads a
clock, and is tested against the RFC 6605 and RFC 8080 examples.

It must not touch the wire parser or the server loop: `dns.engine` calls
`Signer.sign_answer` for queries with the DO bit (RFC 4035 3.1) and the
reply cache keeps the signed bytes like any other reply.
"""
from dns.dnssec.keys import SigningKey, generate_key, load_key, save_key  # noqa: F401
from dns.dnssec.signer import Signer  # noqa: F401
