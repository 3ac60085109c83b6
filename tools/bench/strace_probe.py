"""Prove that the node's HTTP bodies go out by sendfile(2): strace its workers for a while.

Why: "the body is sent with os.sendfile" is a claim about the code path (aiohttp ->
asyncio loop.sendfile -> os.sendfile, with no silent fallback to read+send); counting the
calls and the bytes they moved, next to the bytes the client received in the same window,
checks it on the running node. The command, per worker:

    strace -f -C -e trace=sendfile -o FILE -p PID

`-f` attaches every thread of the worker (its HTTP thread does the sending), `-C` writes each
call (its return value is the bytes sent) and the `-c` summary at detach. Attaching with `-p`
stops the tracee at every system call (seccomp-bpf filtering is not available to `-p`), so a
traced phase is slow: it is a separate, short phase and its throughput is never a result.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile

CALL = re.compile(r"\bsendfile(?:64)?\(.*\)\s+=\s+(-?\d+)(?:\s+(E[A-Z]+))?")


def available() -> bool:
    return shutil.which("strace") is not None


class Probe:
    """strace attached to some pids until `stop()`; `stop()` returns what it saw."""

    def __init__(self, pids: list[int], syscalls: str = "sendfile") -> None:
        self.dir = tempfile.mkdtemp(prefix="mini-oss-strace-")
        self.syscalls = syscalls
        self.procs: list[tuple[int, str, subprocess.Popen]] = []
        for pid in pids:
            out = os.path.join(self.dir, f"strace-{pid}.txt")
            command = ["strace", "-f", "-C", "-e", f"trace={syscalls}", "-o", out, "-p", str(pid)]
            self.procs.append((pid, out, subprocess.Popen(command, stderr=subprocess.PIPE, text=True)))
        self.command = "strace -f -C -e trace=%s -o FILE -p PID" % syscalls

    def stop(self) -> dict:
        per_pid = []
        for pid, out, proc in self.procs:
            proc.send_signal(signal.SIGINT)   # detach: strace writes the -c summary then
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            per_pid.append(dict(parse(_read(out)), pid=pid, strace_stderr=err.strip()[-500:]))
        shutil.rmtree(self.dir, ignore_errors=True)
        return {"command": self.command, "workers": per_pid,
                "calls": sum(w["calls"] for w in per_pid),
                "errors": sum(w["errors"] for w in per_pid),
                "bytes": sum(w["bytes"] for w in per_pid)}


def parse(text: str) -> dict:
    """Calls, failed calls (by errno), bytes moved, and strace's own `-c` summary table."""
    calls = failed = moved = 0
    errnos: dict[str, int] = {}
    summary: list[str] = []
    in_summary = False
    for line in text.splitlines():
        if line.startswith("% time"):
            in_summary = True
        if in_summary:
            summary.append(line)
            continue
        match = CALL.search(line)
        if not match:
            continue
        calls += 1
        value = int(match.group(1))
        if value < 0:
            failed += 1
            errnos[match.group(2) or "?"] = errnos.get(match.group(2) or "?", 0) + 1
        else:
            moved += value
    return {"calls": calls, "errors": failed, "errnos": errnos, "bytes": moved,
            "summary": "\n".join(summary)}


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""
