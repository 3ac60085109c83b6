"""The command line's progress line: one unit system (binary: KiB, MiB, GiB, MiB/s), rate, ETA.

Why not tqdm: with `unit_divisor=1024` it divides by 1024 but still writes "MB", so the bar and
the messages disagreed about units. This draws one line on stderr, redrawn at most ten times a
second, with a rate averaged over the last few seconds (a resumed transfer's skipped prefix does
not count as speed). Formatting is pure and unit-tested.
"""

from __future__ import annotations

import collections
import sys
import time
from typing import IO, Callable

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(n: float) -> str:
    """Bytes in binary units: '512 B', '1.5 KiB', '1.2 GiB'."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(n)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_rate(bytes_per_second: float) -> str:
    return human_size(bytes_per_second) + "/s"


def human_duration(seconds: float) -> str:
    """'0:07', '12:34', '1:02:03'."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(label: str, done: int, total: int, rate: float | None) -> str:
    """'photo-1  40%  1.2 GiB of 3.0 GiB  25.0 MiB/s  ETA 1:12'."""
    percent = f"{100 * done // total:3d}%" if total > 0 else "100%"
    parts = [label, percent, f"{human_size(done)} of {human_size(total)}"]
    if rate:
        parts.append(human_rate(rate))
        parts.append(f"ETA {human_duration((total - done) / rate)}" if done < total else "done")
    return "  ".join(parts)


class ProgressLine:
    """A progress(done, total) callback drawing one line on a terminal."""

    WINDOW = 5.0     # seconds of samples the rate is averaged over
    INTERVAL = 0.1   # least seconds between redraws

    def __init__(self, label: str, stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self._stream = stream or sys.stderr
        self._clock = clock
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._drawn = 0.0
        self._width = 0

    def rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 and d1 >= d0 else None

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        self._samples.append((now, done))
        while self._samples and now - self._samples[0][0] > self.WINDOW:
            self._samples.popleft()
        if now - self._drawn < self.INTERVAL and done < total:
            return
        self._drawn = now
        line = progress_line(self.label, done, total, self.rate())
        self._stream.write("\r" + line.ljust(self._width))
        self._stream.flush()
        self._width = len(line)

    def close(self) -> None:
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
