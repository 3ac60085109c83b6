"""Start and stop the servers a bench measures: a node on a temp data dir, or the bare ceiling.

Why: the node-to-ceiling ratio is only meaningful when both servers ran in the same session,
on the same machine state, with the same worker count, so `--spawn-node` / `--spawn-bare` (and
`compare`) start them here. Both print `mini-oss gRPC server started at :PORT` when every
worker serves; stderr goes to a log file (the supervisor logs `worker N started (pid P)`, which
maps worker pids to worker ids). The node prints `mini-oss HTTP server started at :PORT` first
(kept as `http_port`); the bare sendfile server prints only that line, so it is its ready line.
A target is stopped by its own pid: SIGTERM, wait, then SIGKILL
of its process group (it is started in a session of its own). A spawned node's data dir is
deleted when it stops.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

READY = re.compile(r"mini-oss gRPC server started at :(\d+)")
#: The node prints this just before READY; the bare sendfile server prints only this line.
HTTP_READY = re.compile(r"mini-oss HTTP server started at :(\d+)")
WORKER = re.compile(r"worker (\d+) started \(pid (\d+)\)")
START_TIMEOUT = 60.0


class Target:
    """A server process we started, and what the bench needs to know about it."""

    def __init__(self, kind: str, command: list[str], data_dir: str | None, log_dir: str,
                 cwd: str | None = None, env: dict[str, str] | None = None,
                 ready: re.Pattern = READY) -> None:
        self.kind = kind
        self.ready = ready
        self.env = env or {}
        self.cwd = cwd or _repo_root()
        self.command = command
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.log_path = os.path.join(log_dir, f"{kind}.log")
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.http_port = 0   # from the HTTP ready line, when the target prints one

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> "Target":
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=log, env=env,
                                     start_new_session=True, cwd=self.cwd)
        log.close()
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for raw in self.proc.stdout:
                lines.put(raw.decode(errors="replace"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            http = HTTP_READY.search(line)
            if http:
                self.http_port = int(http.group(1))
            match = self.ready.search(line)
            if match:
                self.port = int(match.group(1))
                return self
        self.stop()
        raise RuntimeError(f"{self.kind} did not start; its log:\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def worker_labels(self) -> dict[int, str]:
        """pid -> "worker N", from the `worker N started (pid P)` lines (the last one wins)."""
        return {int(pid): f"worker{wid}" for wid, pid in WORKER.findall(self.log_text())}

    def stop(self, timeout: float = 60.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def spawn_node(workers: int, data_root: str = "", log_dir: str | None = None,
               extra_args: list[str] | None = None, node_root: str = "",
               env: dict[str, str] | None = None) -> Target:
    """A node with default settings (except workers), a fresh data dir, no metrics endpoint.

    `node_root`: a directory holding another copy of the `node` package (e.g. an export of a
    commit) to measure instead of this checkout's. `env`: extra environment (e.g. malloc tuning)."""
    data_dir = tempfile.mkdtemp(prefix="mini-oss-bench-", dir=data_root or None)
    log_dir = log_dir or tempfile.mkdtemp(prefix="mini-oss-bench-logs-")
    command = [sys.executable, "-m", "node", "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
               "--data-dir", data_dir, "--metrics-listen", "", "--workers", str(workers)]
    return Target("node", command + list(extra_args or []), data_dir, log_dir,
                  cwd=node_root or None, env=env).start()


def spawn_bare(workers: int, object_size: int, chunk_size: int, log_dir: str | None = None,
               verify_sink: bool = False, read_source: bool = False, source_dir: str = "") -> Target:
    """The bare gRPC sink/source (tools.bench.bare_server) with `workers` processes;
    `verify_sink`: its Upload checks CRC-32s and hashes SHA-256 as the node does;
    `read_source`: its Download reads, checksums and encodes every chunk as the node does, from
    a file it writes under `source_dir` (default: system temp) and deletes when it stops."""
    log_dir = log_dir or tempfile.mkdtemp(prefix="mini-oss-bench-logs-")
    command = [sys.executable, "-m", "tools.bench.bare_server", "--listen", "127.0.0.1:0",
               "--workers", str(workers), "--object-size", str(object_size),
               "--chunk-size", str(chunk_size)]
    if verify_sink:
        command.append("--verify-sink")
    if read_source:
        command.append("--read-source")
        if source_dir:
            command += ["--source-dir", source_dir]
    return Target("bare", command, None, log_dir).start()


def spawn_bare_sendfile(workers: int, object_size: int, data_root: str = "",
                        log_dir: str | None = None) -> Target:
    """The bare sendfile HTTP server (tools.bench.bare_sendfile): `workers` processes serving
    one temp file of `object_size` bytes (made under `data_root`, deleted when it stops)."""
    log_dir = log_dir or tempfile.mkdtemp(prefix="mini-oss-bench-logs-")
    command = [sys.executable, "-m", "tools.bench.bare_sendfile", "--listen", "127.0.0.1:0",
               "--workers", str(workers), "--object-size", str(object_size)]
    if data_root:
        command += ["--data-root", data_root]
    return Target("bare-sendfile", command, None, log_dir, ready=HTTP_READY).start()
