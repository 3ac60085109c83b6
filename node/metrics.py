"""Counters in shared memory: one slot per worker, one writer per slot, no lock.

The supervisor creates a small block of shared memory before it starts the workers: an
anonymous memory file (`memfd_create`), which has no name to leave behind however the
supervisor ends (named files in `/dev/shm` outlived every kill -9 of it, one per start). It
holds the file open for its lifetime; each worker, started or restarted, opens it through
`/proc/<supervisor pid>/fd/<fd>`, maps it and writes only its own slot, from its event-loop
thread. The supervisor reads every slot and merges them for `/metrics`. A restarted worker
takes over its slot and keeps adding to it, so totals survive restarts; gauges (active streams)
are reset, because the dead worker's streams died with it.

Values are float64 at 8-byte-aligned offsets: on the machines we run on such stores are atomic,
so a reader sees an old or a new value, never a torn one. A slot is laid out as the counters,
the gauges, one counter per gRPC status code, then per histogram its bucket counts (the last
one is +Inf), its sum and its count.

This module imports no gRPC: the supervisor uses it.
"""

from __future__ import annotations

import bisect
import mmap
import os
from dataclasses import dataclass

COUNTERS = (
    "received_bytes", "sent_bytes", "chunks_received", "chunks_sent", "objects_committed",
    "sessions_created", "sessions_committed", "sessions_aborted", "sessions_expired",
    # CPU seconds of the slot's worker processes, each adding its own from its heartbeat: a
    # restarted worker adds to what its predecessors used, so the total never goes down.
    "cpu_seconds",
    # The HTTP face: object bytes sent and received, and requests by status class.
    "http_sent_bytes", "http_received_bytes",
    "http_requests_2xx", "http_requests_3xx", "http_requests_4xx", "http_requests_5xx",
)
GAUGES = ("active_streams", "heartbeat", "pid", "ready", "starts")
STATUS_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HISTOGRAMS = {
    "chunk_write_seconds": _LATENCY_BUCKETS,
    "commit_seconds": _LATENCY_BUCKETS,
    "download_first_byte_seconds": _LATENCY_BUCKETS,
    "http_request_seconds": _LATENCY_BUCKETS,
}


@dataclass(frozen=True)
class _Layout:
    """Index of every value inside a slot."""

    index: dict[str, int]
    histograms: dict[str, tuple[int, tuple[float, ...]]]  # name -> (first index, buckets)
    size: int


def _layout() -> _Layout:
    index: dict[str, int] = {}
    for name in COUNTERS + GAUGES:
        index[name] = len(index)
    for code in STATUS_CODES:
        index[f"errors:{code}"] = len(index)
    histograms = {}
    position = len(index)
    for name, buckets in HISTOGRAMS.items():
        histograms[name] = (position, buckets)
        position += len(buckets) + 1 + 2  # buckets, +Inf, sum, count
    return _Layout(index, histograms, position)


LAYOUT = _layout()
SLOT_BYTES = LAYOUT.size * 8


class Slot:
    """One worker's values. Only that worker writes them."""

    def __init__(self, values: memoryview) -> None:
        self._v = values

    def add(self, name: str, amount: float = 1.0) -> None:
        self._v[LAYOUT.index[name]] += amount

    def set(self, name: str, value: float) -> None:
        self._v[LAYOUT.index[name]] = value

    def get(self, name: str) -> float:
        return self._v[LAYOUT.index[name]]

    def error(self, code: str) -> None:
        key = f"errors:{code}"
        if key in LAYOUT.index:
            self._v[LAYOUT.index[key]] += 1

    def observe(self, histogram: str, seconds: float) -> None:
        first, buckets = LAYOUT.histograms[histogram]
        self._v[first + bisect.bisect_left(buckets, seconds)] += 1
        self._v[first + len(buckets) + 1] += seconds
        self._v[first + len(buckets) + 2] += 1

    def histogram(self, name: str) -> tuple[list[float], float, float]:
        """(non-cumulative bucket counts including +Inf, sum, count)."""
        first, buckets = LAYOUT.histograms[name]
        counts = [self._v[first + i] for i in range(len(buckets) + 1)]
        return counts, self._v[first + len(buckets) + 1], self._v[first + len(buckets) + 2]


class MetricsBlock:
    """The mapped block of `slots` slots, backed by a file both sides can open (`path`)."""

    def __init__(self, path: str, slots: int, fd: int, *, keep_open: bool = False) -> None:
        self.path = path
        self.slots = slots
        self._map = mmap.mmap(fd, slots * SLOT_BYTES)
        self._fd: int | None = fd if keep_open else None  # the creator's: `path` names it
        if not keep_open:
            os.close(fd)
        self._values = memoryview(self._map).cast("d")

    @classmethod
    def create(cls, slots: int) -> "MetricsBlock":
        """A zero-filled block, named only by this process's open file (see the module doc)."""
        fd = os.memfd_create("mini-oss-metrics", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, slots * SLOT_BYTES)
        except BaseException:
            os.close(fd)
            raise
        return cls(f"/proc/{os.getpid()}/fd/{fd}", slots, fd, keep_open=True)

    @classmethod
    def open(cls, path: str) -> "MetricsBlock":
        fd = os.open(path, os.O_RDWR)
        size = os.fstat(fd).st_size
        return cls(path, size // SLOT_BYTES, fd)

    def slot(self, index: int) -> Slot:
        return Slot(self._values[index * LAYOUT.size:(index + 1) * LAYOUT.size])

    def total(self, name: str) -> float:
        return sum(self.slot(i).get(name) for i in range(self.slots))

    def close(self) -> None:
        self._values.release()
        try:
            self._map.close()
        except BufferError:  # a Slot view is still alive; the map goes with the process
            pass
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class NullSlot:
    """Stands in for a Slot when the node runs without a metrics block."""

    def add(self, name: str, amount: float = 1.0) -> None: ...
    def set(self, name: str, value: float) -> None: ...
    def error(self, code: str) -> None: ...
    def observe(self, histogram: str, seconds: float) -> None: ...


class LoopForwarder:
    """Lets pool threads record into a slot while keeping its single writer: every update is
    handed to the event-loop thread, which owns the slot."""

    def __init__(self, loop, slot) -> None:
        self._loop = loop
        self._slot = slot

    def add(self, name: str, amount: float = 1.0) -> None:
        self._loop.call_soon_threadsafe(self._slot.add, name, amount)

    def observe(self, histogram: str, seconds: float) -> None:
        self._loop.call_soon_threadsafe(self._slot.observe, histogram, seconds)
