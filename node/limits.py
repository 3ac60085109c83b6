"""Process limits: file descriptors, and stream places per client.

Why: every open stream holds files (an object being read, a part being written) and a socket,
and the soft RLIMIT_NOFILE (often 1024) is far below what a busy worker needs; the hard limit
is what the administrator allows. `raise_fd_limit()` lifts the soft limit to the hard one; the
supervisor and each worker call it at start. It imports no gRPC, so the supervisor may use it.

When a process runs out anyway, `open()` fails with EMFILE (ENFILE: the whole system is out).
That is a load peak, not the caller's mistake and not a bug: `out_of_files(exc)` recognises it
(also behind SQLite's "unable to open database file", which hides the errno), and the servicer
answers RESOURCE_EXHAUSTED/TOO_MANY_OPEN_FILES with a RetryInfo instead of INTERNAL.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import sqlite3
from typing import Iterator

FD_ERRNOS = (errno.EMFILE, errno.ENFILE)


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the (soft, hard) now in force.

    Never fails: a limit that cannot be raised is left as it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        # An unlimited hard limit cannot be a soft one on Linux: the kernel's ceiling is.
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = soft
    else:
        target = hard
    if soft != resource.RLIM_INFINITY and target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    return soft, hard


def fds_exhausted() -> bool:
    """Is this process (or the system) out of file descriptors, or nearly (the failure being
    judged happened a moment ago, in another thread: a few may have been closed since)?"""
    try:
        count = len(os.listdir("/proc/self/fd"))  # itself needs a descriptor: the probe
    except OSError as exc:
        return exc.errno in FD_ERRNOS
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return False
    return count >= soft - max(16, soft // 20)


def out_of_files(exc: BaseException) -> bool:
    """Is `exc` (or an exception it was raised from or while handling) a lack of file
    descriptors: an OSError EMFILE/ENFILE, or SQLite failing to open a file while the process
    is out of them?"""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, OSError) and current.errno in FD_ERRNOS:
            return True
        if isinstance(current, sqlite3.OperationalError) and "unable to open" in str(current):
            return fds_exhausted()
        current = current.__cause__ or current.__context__
        seen += 1
    return False


class StreamPlaces:
    """Open streams per client address in one worker, at most `cap` each (0: no cap).

    A place is taken before a stream opens any file, so one client's streams (stalled ones
    included) cannot take every descriptor and all the memory of the worker. The gRPC servicer
    and the HTTP face each keep one (`max_streams_per_client`). One event loop uses it."""

    def __init__(self, cap: int, what: str) -> None:
        self.cap = cap
        self.what = what
        self.held: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, client: str) -> Iterator[None]:
        """One of the client's places for the block, or TooManyStreams."""
        from node.errors import TooManyStreams

        open_now = self.held.get(client, 0)
        if self.cap and open_now >= self.cap:
            raise TooManyStreams(f"this client has {open_now} {self.what} open on this worker, "
                                 f"the most it may", max_streams_per_client=self.cap)
        self.held[client] = open_now + 1
        try:
            yield
        finally:
            left = self.held[client] - 1
            if left:
                self.held[client] = left
            else:
                del self.held[client]
