"""How a parallel download cuts one object into ranges and keeps count of them: pure, no I/O.

Why: one Download stream is served by one node worker and read by one client thread, so a big
object is fetched faster over several streams on several connections (`mini-oss get
--parallel N`, `Client.download(..., parallel=N)`). What is arithmetic about that lives here,
tested directly: where the ranges are cut, how many streams by default, how far each range
has got, and when that progress is worth writing down for a re-run.

A range is `(start, end, done)`: bytes [start, end) of the object, of which the first `done`
are in the file. The resume entry stores exactly these triples.

Cuts fall on multiples of 1 MiB (or of the chunk size, if larger): each stream then reads and
writes whole chunks and whole pages, and no two streams ever share a page of the file.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

MiB = 1024 * 1024

Range = tuple[int, int, int]

#: Cuts fall on multiples of this (or of a larger chunk size).
ALIGN = 1 * MiB
#: Below this size a default `get` uses one stream: more would only add connections and threads.
#: Measured (tools/bench/RESULTS.md, "get --parallel"): on a 2-core machine running the node
#: too, one stream is ~10 % faster for 256 MiB: the streams go 1.45x faster but the read-back
#: hash costs more. Parallel is the default for where the client has cores of its own.
AUTO_MIN_SIZE = 64 * MiB
#: The default stream count is the node's worker count, kept within these bounds: two streams
#: help even a one-worker node (one stream is bound by its client thread), and past eight the
#: client's own cores are the limit.
AUTO_MIN_STREAMS, AUTO_MAX_STREAMS = 2, 8
#: The most streams anyone may ask for (each is a thread, a connection and a call slot).
MAX_STREAMS = 64
#: A range's progress is saved at least every this many bytes of it (less for small ranges,
#: see `save_step`), and whenever SAVE_SECONDS passed with any progress: what a kill -9 can
#: cost a re-run is bounded both in bytes and in time.
SAVE_BYTES = 8 * MiB
SAVE_SECONDS = 2.0


def split(start: int, end: int, n: int, chunk_size: int = 0) -> tuple[Range, ...]:
    """[start, end) cut into at most `n` contiguous ranges with nothing done, cuts on multiples
    of max(ALIGN, chunk_size) spread as evenly as they can be; fewer ranges when there are
    fewer aligned points inside, one (possibly empty) range at least."""
    if n < 1:
        raise ValueError("n must be >= 1")
    if not 0 <= start <= end:
        raise ValueError(f"bad span {start}..{end}")
    align = max(ALIGN, chunk_size)
    first = start // align + 1              # the first aligned point after start
    inner = [p * align for p in range(first, -(-end // align))]  # aligned points inside
    pieces = len(inner) + 1
    n = min(n, pieces)
    cuts = [inner[k * pieces // n - 1] for k in range(1, n)]
    bounds = [start, *cuts, end]
    return tuple((a, b, 0) for a, b in zip(bounds, bounds[1:]))


def after_prefix(size: int, prefix: int, n: int, chunk_size: int = 0) -> tuple[Range, ...]:
    """Ranges for a file whose first `prefix` bytes are already in place (what a one-stream
    run left): that prefix as one finished range, the rest cut into `n`."""
    if prefix <= 0:
        return split(0, size, n, chunk_size)
    return ((0, prefix, prefix), *split(prefix, size, n, chunk_size))


def valid(ranges: Sequence[Sequence[int]], size: int) -> bool:
    """Do these ranges (from a resume entry: edited, torn or foreign ones are possible) cover
    [0, size) contiguously, each with 0 <= done <= its length?"""
    at = 0
    for r in ranges:
        if len(r) != 3 or not all(isinstance(x, int) for x in r):
            return False
        start, end, done = r
        if start != at or end < start or not 0 <= done <= end - start:
            return False
        at = end
    return bool(ranges) and at == size


def auto_streams(size: int, workers: Callable[[], int]) -> int:
    """How many streams a `get` without --parallel uses: one below AUTO_MIN_SIZE, else the
    node's worker count (asked only then) within [AUTO_MIN_STREAMS, AUTO_MAX_STREAMS]."""
    if size < AUTO_MIN_SIZE:
        return 1
    return max(AUTO_MIN_STREAMS, min(AUTO_MAX_STREAMS, workers()))


def save_step(length: int) -> int:
    """Bytes of one range between two saves: SAVE_BYTES, or an eighth of a smaller range (so a
    small object's ranges are saved a few times too, not only at the end)."""
    return max(1, min(SAVE_BYTES, length // 8))


class Tally:
    """How far each range has got: each range's thread adds what it wrote, one other thread
    reads the total for the progress line and takes the snapshots that are saved.

    Thread-safe (one lock, held for a few additions). `now` is passed in: no clock of its own.
    """

    def __init__(self, ranges: Sequence[Sequence[int]], now: float = 0.0) -> None:
        if not ranges:
            raise ValueError("no ranges")
        self._ranges = [list(r) for r in ranges]
        self._lock = threading.Lock()
        self._saved = [r[2] for r in self._ranges]
        self._saved_at = now
        self.size = self._ranges[-1][1] - self._ranges[0][0]

    def add(self, index: int, n: int) -> None:
        with self._lock:
            r = self._ranges[index]
            if r[2] + n > r[1] - r[0]:
                raise ValueError(f"range {index} would pass its end")
            r[2] += n

    def range(self, index: int) -> Range:
        with self._lock:
            start, end, done = self._ranges[index]
        return start, end, done

    def unfinished(self) -> list[int]:
        """Indexes of the ranges with bytes still to fetch, in file order."""
        with self._lock:
            return [i for i, (start, end, done) in enumerate(self._ranges) if done < end - start]

    def done(self) -> int:
        with self._lock:
            return sum(r[2] for r in self._ranges)

    def snapshot(self) -> tuple[Range, ...]:
        with self._lock:
            return tuple((start, end, done) for start, end, done in self._ranges)

    def checkpoint(self, now: float) -> tuple[Range, ...] | None:
        """The ranges to save now, if a save is due (a range moved `save_step` since its last
        save, or SAVE_SECONDS passed with any progress); marks them saved. Else None."""
        with self._lock:
            moved = [r[2] - s for r, s in zip(self._ranges, self._saved)]
            due = any(m >= save_step(r[1] - r[0]) for m, r in zip(moved, self._ranges)) or (
                any(moved) and now - self._saved_at >= SAVE_SECONDS)
            if not due:
                return None
            self._saved = [r[2] for r in self._ranges]
            self._saved_at = now
            return tuple((start, end, done) for start, end, done in self._ranges)
