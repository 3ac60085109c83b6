"""Named fault-injection points, switched on by the environment (tests and drills only).

Like FreeBSD's fail(9) or TiKV's fail-rs: code calls `hit("name")` at a point where a crash or
an error is interesting, and nothing happens unless `MINI_OSS_FAILPOINTS` names that point:

    MINI_OSS_FAILPOINTS="commit_renamed=crash,worker_boot=error"

Actions: `error` raises FailpointError; `crash` is kill -9 of the process itself (no cleanup,
no flush: a real crash); `sleep:S` sleeps S seconds; `pause:S` waits until the file
`<DIR>/<name>.resume` exists (DIR as below), at most S seconds; `crash-after:N` /
`error-after:N` act on the Nth hit only. When the variable is unset, `hit` is one dictionary
truth test.

With `MINI_OSS_FAILPOINTS_ONCE=DIR`, each point acts at most once across every process that
shares DIR (a marker file is created there first): a crash that a restarted worker would
otherwise repeat forever happens once, as a real one would. The marker also tells a test that
the point was reached; with `pause`, the test then does what it must while the process waits
there, and creates `<name>.resume` to let it go on (a `sleep` window may close first on a
loaded machine).

Points: worker_boot (before a worker serves), chunk_written (after a chunk's pwrite),
checkpoint_synced (after fdatasync, before the catalog write), commit_renamed (part moved into
objects/, before the catalog transaction), commit_published (index swapped, before the
transaction commits), commit_recorded (the transaction committed, before the replaced version
is freed), session_recorded (a new session's row written, before its part file exists),
put_written (a one-call put's bytes written to its .put. file, before the rename; the put also
hits commit_renamed, commit_published and commit_recorded).
"""

from __future__ import annotations

import os
import signal
import threading
import time

ENV = "MINI_OSS_FAILPOINTS"


class FailpointError(RuntimeError):
    """An injected failure."""


def _parse(text: str) -> dict[str, tuple[str, float]]:
    points: dict[str, tuple[str, float]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, action = item.partition("=")
        kind, _, arg = action.partition(":")
        if kind not in ("error", "crash", "sleep", "pause", "crash-after", "error-after"):
            raise ValueError(f"{ENV}: unknown action {action!r} for {name!r}")
        points[name.strip()] = (kind, float(arg) if arg else 1.0)
    return points


_points = _parse(os.environ.get(ENV, ""))
_once_dir = os.environ.get(ENV + "_ONCE", "")
_hits: dict[str, int] = {}
_lock = threading.Lock()


def hit(name: str) -> None:
    if not _points or name not in _points:
        return
    kind, arg = _points[name]
    with _lock:
        _hits[name] = count = _hits.get(name, 0) + 1
    acts = kind in ("sleep", "pause", "error", "crash") or count == int(arg)
    if acts and _once_dir and not _first_time(name):
        return
    if kind == "sleep" or (kind == "pause" and not _once_dir):
        time.sleep(arg)
    elif kind == "pause":
        resume, deadline = os.path.join(_once_dir, name + ".resume"), time.monotonic() + arg
        while not os.path.exists(resume) and time.monotonic() < deadline:
            time.sleep(0.02)
    elif kind == "error" or (kind == "error-after" and count == int(arg)):
        raise FailpointError(f"failpoint {name}")
    elif kind == "crash" or (kind == "crash-after" and count == int(arg)):
        os.kill(os.getpid(), signal.SIGKILL)


def _first_time(name: str) -> bool:
    try:
        os.close(os.open(os.path.join(_once_dir, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
