"""How often one client may ask: a token bucket per client address.

Two limits use it: every request (`RateLimit`, the first middleware after the request counter, so a
flood costs the box a table look-up and a 429) and wrong tokens (`auth.Identify`, so guessing a token
gets a few tries a minute from one address, however fast it asks).

A client is its peer address; an IPv4 client on a dual-stack socket (`::ffff:a.b.c.d`) is its IPv4
address.  The table is bounded: beyond `MAX_CLIENTS` the least recently seen client is forgotten, so a
client with many addresses (an IPv6 prefix holds billions) cannot grow the worker's memory.  A
forgotten client starts again with a full bucket, which gives such a client nothing its fresh
addresses would not give it anyway.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ServiceError, TooManyRequests
from .auth import ROUTE_KEY
from .http import client_of

# About 250 bytes a client (measured with full IPv6 addresses): 1 MB a table at most, for far more
# clients than a home LAN has.
MAX_CLIENTS = 4096
# The metrics label of requests refused here: they reach no route.
ROUTE = "rate_limited"


class Buckets:
    """A bucket per client holding up to `burst` tokens, refilled at `rate` a second; a rate of 0 is no
    limit.  `clock` is injectable for tests."""

    def __init__(self, rate: float, burst: float, clients: int = MAX_CLIENTS,
                 clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clients, self.clock = rate, burst, clients, clock
        self._table: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client: (tokens, when counted)

    def _tokens(self, client: str) -> float:
        now = self.clock()
        tokens, then = self._table.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        self._table[client] = (tokens, now)  # the most recently seen last
        if len(self._table) > self.clients:
            self._table.popitem(last=False)
        return tokens

    def wait(self, client: str) -> int:
        """Seconds until `client` has a token, 0 when it has one now; whole seconds, rounded up, as
        Retry-After says them (rounded down, the client would come back too early)."""
        if not self.rate:
            return 0
        tokens = self._tokens(client)
        return 0 if tokens >= 1 else math.ceil((1 - tokens) / self.rate)

    def take(self, client: str) -> int:
        """Take one of `client`'s tokens and return 0, or, when it has none, the seconds until it will
        (a refused request takes nothing, so asking faster does not lock a client out for longer)."""
        wait = self.wait(client)
        if not wait and self.rate:
            tokens, then = self._table[client]
            self._table[client] = (tokens - 1, then)
        return wait

    def refund(self, client: str) -> None:
        """Give back the token taken for a check that passed.  A guess is charged before it is checked
        (take, then check, then refund if right), so checks that run at once cannot outrun the bucket."""
        if self.rate and client in self._table:
            tokens, then = self._table[client]
            self._table[client] = (min(self.burst, tokens + 1), then)


class RateLimit:
    """429 with Retry-After for a client over its rate, before anything else is done for the request."""

    def __init__(self, app: ASGIApp, buckets: Buckets, error: Callable[[str, ServiceError], JSONResponse]):
        self.app, self.buckets, self.error = app, buckets, error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (seconds := self.buckets.take(client_of(scope))):
            return await self.app(scope, receive, send)
        scope[ROUTE_KEY] = ROUTE
        refused = TooManyRequests(f"too many requests from this address: the box takes {self.buckets.rate:g} a "
                                  f"second from one client (bursts of {self.buckets.burst:g}); wait {seconds} s "
                                  "(Retry-After) and send fewer", retry_after=seconds)
        await self.error(scope["path"], refused)(scope, receive, send)
