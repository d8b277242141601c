"""Plumbing shared by the DNS server, the edge and the lab: nothing protocol-specific.

Owns: parsing and printing ``HOST:PORT`` (`plumbing.addr`), the one IP
normaliser (IPv4-mapped IPv6 becomes IPv4, `plumbing.addr.normalise_ip`),
listening sockets (`plumbing.listen`), the key=value log line
(`plumbing.kvlog`) and the TOML layer under every config loader
(`plumbing.toml`: reading, line numbers, typed getters, `ConfigError` as
``file:line: key: what is wrong``).

Must not import anything of this project (only the standard library): `dns`,
`geo`, `edge`, `netns` and `gslb` all import it, and the import rules
(`dns -> geo`, `edge` stands alone, `netns` drives the others by their command
line) stay true only if this package is a leaf.
"""
