"""CHAOS-class server identification: `version.bind`, `hostname.bind`, `id.server`.

Owns the TXT CH answers an operator configured (`[chaos]`); every other
CHAOS query is REFUSED, as every non-IN class is (RFC 8906 3.1.4: an answer,
never silence). Nothing is answered unless configured: a version string is
what a scanner looks for first.
"""
from __future__ import annotations

from typing import Any

from dns.wire import ANY, RR, TXT, character_strings, name_from_text

CLASS_CH = 3  # RFC 1035 3.2.4

# name -> the [chaos] key answering it (BIND's names; RFC 4892 2 for id.server)
NAMES = {"version.bind.": "version", "version.server.": "version",
         "hostname.bind.": "hostname", "id.server.": "id"}


def table(cfg: Any) -> dict[bytes, bytes]:
    """Lower-case wire name -> TXT RDATA, for the configured keys only."""
    settings = getattr(cfg, "chaos", None)
    out: dict[bytes, bytes] = {}
    if settings is None:
        return out
    for name, key in NAMES.items():
        text = getattr(settings, key)
        if text is not None:
            out[name_from_text(name)] = character_strings(text)
    return out


def answer(records: dict[bytes, bytes], qname_key: bytes, qname: bytes, qtype: int
           ) -> tuple[RR, ...] | None:
    """The answer RRs for a CH query (empty: NODATA), or None when the name is not ours."""
    rdata = records.get(qname_key)
    if rdata is None:
        return None
    if qtype not in (TXT, ANY):
        return ()
    return (RR(qname, TXT, 0, (rdata,), rclass=CLASS_CH),)
