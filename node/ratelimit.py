"""Per-client rate limits: a token bucket for requests and one for bytes.

Why: one client must not be able to take a node's whole capacity, by calls or by bandwidth.

How: each client address (`node.service.client_of`, e.g. "ipv4:127.0.0.1") gets up to two
token buckets. A bucket holds at most `depth` tokens (the rate times `rate_limit_burst`
seconds, at least 1) and refills at `rate` per second; it starts full, so a quiet client may
burst.

* Requests (`rate_limit_requests`/s): `admit(client)`, called by the servicer at the start of
  every call, takes one token, or refuses the call with RESOURCE_EXHAUSTED/RATE_LIMITED and a
  RetryInfo saying when the next token will be there.
* Bytes (`rate_limit_bytes`/s, uploads and downloads together): `await pace(client, n)`,
  called before each chunk is written or sent, takes `n` tokens even if that puts the bucket
  in debt, then sleeps until the debt is paid. A stream over the rate is slowed down, never
  failed, and concurrent streams of one client share the rate. A client that runs up a debt of
  more than one burst (several streams at once) has its NEW calls refused by `admit` with
  RATE_LIMITED until it is back within one burst; its running streams go on, paced.

The arithmetic (`Bucket`, `RateLimiter.charge`, `admit`) is pure: it reads an injected clock
and never sleeps, so it is tested with a fake clock; only `pace` awaits (an injected) sleep.
Everything runs on the worker's event-loop thread, so nothing needs a lock.

Memory stays bounded: a bucket that has refilled to full is the same as no bucket, so every
`sweep_interval` seconds the buckets that are full are dropped; if `max_clients` are still
tracked, the least recently seen client is dropped (it merely gets a fresh, full bucket).

Limits are per worker process: each worker keeps its own buckets, and the kernel spreads a
client's connections over the workers, so a client with connections to N workers may get up to
N times the configured rates. Run with `--workers 1` where the limit must be exact.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from typing import Awaitable, Callable

from node.config import Settings
from node.errors import RateLimited

#: The shortest retry_delay sent: a client should never be told to retry "now".
MIN_RETRY_DELAY = 0.001


class Bucket:
    """A token bucket: `level` tokens (may go negative: debt), refilled at `rate`/s to `depth`."""

    __slots__ = ("rate", "depth", "level", "stamp")

    def __init__(self, rate: float, depth: float, now: float) -> None:
        if rate <= 0 or depth <= 0:
            raise ValueError("rate and depth must be > 0")
        self.rate = rate
        self.depth = depth
        self.level = depth
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.depth, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, amount: float, now: float) -> float:
        """Take `amount` if the bucket holds it and return 0.0; else take nothing and return
        the seconds until it will hold it."""
        self.refill(now)
        if self.level >= amount:
            self.level -= amount
            return 0.0
        return (amount - self.level) / self.rate

    def charge(self, amount: float, now: float) -> float:
        """Take `amount`, going into debt if need be; return the seconds until the debt is paid."""
        self.refill(now)
        self.level -= amount
        return max(0.0, -self.level / self.rate)

    def wait_until_above(self, floor: float, now: float) -> float:
        """Seconds until the level is at least `floor` (0.0 if it already is)."""
        self.refill(now)
        return max(0.0, (floor - self.level) / self.rate)

    def full(self, now: float) -> bool:
        return self.level + max(0.0, now - self.stamp) * self.rate >= self.depth


class _Client:
    __slots__ = ("requests", "bytes")

    def __init__(self, requests: Bucket | None, bytes_: Bucket | None) -> None:
        self.requests = requests
        self.bytes = bytes_

    def idle(self, now: float) -> bool:
        return all(b is None or b.full(now) for b in (self.requests, self.bytes))


def _delay(seconds: float) -> float:
    """A retry delay rounded up to the millisecond (so waiting it is always enough)."""
    return max(MIN_RETRY_DELAY, math.ceil(seconds * 1000) / 1000)


class RateLimiter:
    """The servicer's limiter (see `node.service.NoLimits` for the interface)."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 sweep_interval: float = 10.0, max_clients: int = 100_000) -> None:
        self.request_rate = float(settings.rate_limit_requests)
        self.byte_rate = float(settings.rate_limit_bytes)
        self.burst = float(settings.rate_limit_burst)
        self.request_depth = max(1.0, self.request_rate * self.burst)
        self.byte_depth = max(1.0, self.byte_rate * self.burst)
        self.clock = clock
        self.sleep = sleep
        self.sweep_interval = sweep_interval
        self.max_clients = max_clients
        self._clients: collections.OrderedDict[str, _Client] = collections.OrderedDict()
        self._swept = clock()

    @property
    def enabled(self) -> bool:
        return self.request_rate > 0 or self.byte_rate > 0

    @property
    def tracked(self) -> int:
        """How many clients have buckets now. (Not `__len__`: a limiter must never be falsy,
        the servicer's `limiter or NoLimits()` would drop it.)"""
        return len(self._clients)

    # -- the interface ----------------------------------------------------------------------

    def admit(self, client: str) -> None:
        """Let a new call in, or raise RateLimited with the seconds until one would be let in."""
        if not self.enabled:
            return
        now = self.clock()
        state = self._client(client, now)
        if state.bytes is not None:
            # More than one burst of transfer behind: no new calls until within one burst.
            wait = state.bytes.wait_until_above(-self.byte_depth, now)
            if wait > 0:
                raise self._limited(f"this client's transfers are more than {self.burst:g} s "
                                    f"behind the node's limit of {int(self.byte_rate)} bytes/s",
                                    wait, "bytes")
        if state.requests is not None:
            wait = state.requests.take(1, now)
            if wait > 0:
                raise self._limited(f"this client is over the node's limit of "
                                    f"{self.request_rate:g} requests/s", wait, "requests")

    async def pace(self, client: str, nbytes: int) -> None:
        """Hold a stream back so this client's bytes keep to the byte rate."""
        delay = self.charge(client, nbytes)
        if delay > 0:
            await self.sleep(delay)

    def charge(self, client: str, nbytes: int) -> float:
        """Charge `nbytes` to the client's byte bucket; return the seconds to wait (pure)."""
        if self.byte_rate <= 0 or nbytes <= 0:
            return 0.0
        now = self.clock()
        state = self._client(client, now)
        assert state.bytes is not None
        return state.bytes.charge(nbytes, now)

    # -- bookkeeping ------------------------------------------------------------------------

    def _limited(self, message: str, wait: float, limit: str) -> RateLimited:
        err = RateLimited(message, limit=limit)
        err.retry_delay = _delay(wait)
        err.with_metadata(retry_after_ms=int(err.retry_delay * 1000))
        return err

    def _client(self, client: str, now: float) -> _Client:
        state = self._clients.get(client)
        if state is not None:
            self._clients.move_to_end(client)
            return state
        full = len(self._clients) >= self.max_clients
        if now - self._swept >= (min(1.0, self.sweep_interval) if full else self.sweep_interval):
            self.sweep(now)
        while len(self._clients) >= self.max_clients:
            self._clients.popitem(last=False)  # the least recently seen
        state = _Client(
            Bucket(self.request_rate, self.request_depth, now) if self.request_rate > 0 else None,
            Bucket(self.byte_rate, self.byte_depth, now) if self.byte_rate > 0 else None)
        self._clients[client] = state
        return state

    def sweep(self, now: float | None = None) -> int:
        """Drop the buckets that have refilled (dropping a full bucket changes nothing)."""
        now = self.clock() if now is None else now
        self._swept = now
        idle = [client for client, state in self._clients.items() if state.idle(now)]
        for client in idle:
            del self._clients[client]
        return len(idle)
