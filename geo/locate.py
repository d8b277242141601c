"""`geo.locate`: a client (source address, ECS subnet) -> location -> ranked PoPs.

The one call the DNS server makes per query (dns/README.md).
Combines a `GeoDatabase` (where is the client?) with a `Router` (which PoPs
serve it?). Owns no policy: health, address counts and TTLs are `dns/`'s. It
decodes no wire format either: `dns/` parses the ECS option and hands over
the subnet as an `ipaddress` network.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from geo.location import IPAddress, IPNetwork, Located, Location
from geo.mmdb import GeoDatabase, unmap
from geo.routing import Ranking, Router


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a client is, the PoPs that serve it (best first) and the ECS scope.

    `scope_prefix` is what an authoritative server returns as ECS SCOPE
    PREFIX-LENGTH (RFC 7871 7.2.1): the prefix length of the database network
    the client fell in, the widest network over which this placement is known
    to hold. It may exceed the query's SOURCE PREFIX-LENGTH, which tells the
    resolver the subnet it sent was too coarse (RFC 7871 7.3.1). It is 0 when
    the placement holds for every address (an opted-out /0 subnet, an IPv6
    client of an IPv4-only database). Neighbouring networks often rank the
    same; not merging them only makes resolvers cache more finely than they
    could, never wrongly.
    """

    located: Located
    ranking: Ranking
    scope_prefix: int

    @property
    def location(self) -> Location | None:
        return self.located.location

    @property
    def network(self) -> IPNetwork:
        return self.located.network

    @property
    def pops(self) -> tuple[str, ...]:
        return self.ranking.pops

    def log_fields(self) -> str:
        """key=value fields for a structured log line."""
        loc = self.location.describe() if self.location else "unknown"
        return (f"located={self.located.address} network={self.network} scope={self.scope_prefix} "
                f"location=\"{loc}\" {self.ranking.describe()}")


class Locator:
    """Places clients; thread-safe.

    Holds its database open; `close()` releases it. To reload the database or
    the routing, build a new Locator and swap the reference: construction
    either succeeds completely or raises, leaving the old one serving.
    """

    def __init__(self, db: GeoDatabase, router: Router, *, cache_size: int = 65536) -> None:
        self.db = db
        self.router = router
        # address -> Placement. Queries repeat: with ECS the key is a client
        # /24 or /56, without it a resolver's address. A hit costs a dict
        # lookup instead of a database read plus record decoding (several
        # microseconds). Bounded by clearing when full: simpler and cheaper
        # per hit than LRU bookkeeping, and a refill is only a few lookups.
        self._cache: dict[object, Placement] = {}
        self._cache_size = cache_size

    def locate(self, address: IPAddress | str) -> Placement:
        """Place a client by one address (an `ipaddress` address or its text)."""
        placed = self._cache.get(address)
        if placed is None:
            located = self.db.lookup(address)
            placed = Placement(located, self.router.rank(located.location), located.prefix_len)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[address] = placed
        return placed

    def locate_client(self, source: IPAddress | str,
                      client_subnet: IPNetwork | str | None = None) -> Placement:
        """Place the client of a query: by its ECS subnet if any, else by `source`.

        - ECS present, SOURCE PREFIX-LENGTH > 0: the subnet's address with its
          host bits zeroed (RFC 7871 6) is located; the scope is the database
          network's prefix length.
        - ECS with SOURCE PREFIX-LENGTH 0: the client asked that its address
          not be used (RFC 7871 7.1.2), so the resolver's own address (`source`)
          is located, and the scope is 0: the answer may be cached for everyone.
        - No ECS: `source` is located (the scope is then not sent; it is
          reported as the network's prefix length).
        """
        if client_subnet is None:
            return self.locate(source)
        net = (ipaddress.ip_network(client_subnet, strict=False)
               if isinstance(client_subnet, str) else client_subnet)
        if net.prefixlen == 0:
            placed = self.locate(source)
            return Placement(placed.located, placed.ranking, 0)
        return self.locate(unmap(net.network_address))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Locator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
