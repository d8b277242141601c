"""dns: the geo-aware authoritative DNS server (`gslb dns`).

Owns the DNS wire format (`dns.wire`), the zone and its lookup (`dns.zone`),
the answer policy (`dns.policy`), the sans-IO query engine with its reply
cache (`dns.engine`), and the asyncio shell (`dns.server`, `dns.cli`).
Imports go one way: dns -> geo. This package shadows dnspython's `dns`:
nothing here or in its users may depend on dnspython. See dns/README.md.
"""
