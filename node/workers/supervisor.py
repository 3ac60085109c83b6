"""The supervisor: N worker processes behind one port, kept alive, drained on a signal.

It imports no gRPC (gRPC must not be initialised in a process that forks, and the supervisor
needs none). Its life:

1. Take the data directory's lock (node.datadir: one node per data directory; a second
   `serve` is refused at once, naming the holder), then prepare it once (check that the catalog
   is the directory's own, schema and WAL switch, crash recovery) so the workers never race to
   do it. Each worker inherits the lock, so it stays held until the node's last process exits.
2. Reserve the port: bind a SO_REUSEPORT socket that never listens. Port 0 becomes a real
   port here, and every worker binds that same port with `grpc.so_reuseport`; the kernel
   spreads connections over the listening workers.
3. Start the workers (`spawn`), print the ready line once every one is serving.
4. Loop: signal handlers only queue the signal; the loop replaces a worker that died (with
   backoff) or whose heartbeat stopped. A worker that cannot boot stops the node with its
   reason instead of respawning forever: at once before the node was first ready (that is a
   configuration error), after three failures in a row later on.
5. On SIGTERM/SIGINT: forward SIGTERM (each worker drains: health NOT_SERVING, new calls
   UNAVAILABLE/DRAINING, running streams get the grace, then are checkpointed and ended), wait
   for them with a deadline, and exit 0. A second signal kills the workers and exits at once.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from node import datadir
from node.http import signing
from node.catalog import open_backend
from node.config import Settings, split_host_port
from node.errors import CatalogUnavailable
from node.limits import raise_fd_limit
from node.metrics import MetricsBlock
from node.store import prepare_data_dir
from node.workers.worker import worker_main

log = logging.getLogger("mini_oss.supervisor")

READY_LINE = "mini-oss gRPC server started at :{port}"
#: How long a fixed port held by someone else is waited for before the node refuses to start.
PORT_WAIT_SECONDS = 5.0
#: Printed just before READY_LINE, once every worker serves HTTP too (API.md, "HTTP").
HTTP_READY_LINE = "mini-oss HTTP server started at :{port}"
TICK_SECONDS = 0.2
HEARTBEAT_TIMEOUT = 20.0
BOOT_TIMEOUT = 60.0
MAX_BOOT_FAILURES = 3
BACKOFF_START, BACKOFF_MAX, STABLE_SECONDS = 0.5, 10.0, 30.0
DRAIN_MARGIN = 10.0
#: glibc malloc settings for the workers (read at process start, so set before spawning):
#: keep 1 MiB chunk buffers in the heap instead of mmap/munmap per buffer (on these VMs
#: touching fresh pages costs ~1 ms per MiB), don't hand freed memory straight back, and one
#: arena: chunk buffers are allocated by gRPC's and the pool's threads and freed by others, and
#: with two arenas each kept its own high-water mark (16 uploads on one worker: 174 MiB peak
#: with two, 155 with one, the same MB/s; tools/bench/RESULTS.md).
WORKER_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(1024 * 1024 * 1024),
    "MALLOC_ARENA_MAX": "1",
}


class BootFailure(RuntimeError):
    """Workers cannot start: the node stops with this reason."""


@dataclass
class WorkerHandle:
    worker_id: int
    process: multiprocessing.process.BaseProcess | None = None
    conn: Connection | None = None
    started_at: float = 0.0
    ready: bool = False
    boot_failures: int = 0
    backoff: float = 0.0
    restart_at: float | None = None
    reasons: list[str] = field(default_factory=list)


def reserve_port(listen: str) -> socket.socket:
    """Bind (without listening) the node's address with SO_REUSEPORT; keeps port 0 stable.

    A fixed port is first bound *without* SO_REUSEPORT: if any other process holds it (even
    another node, whose sockets allow reuse), that fails, and this node refuses to start
    rather than silently share the port's connections with a stranger."""
    host, port = split_host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + PORT_WAIT_SECONDS
    while port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                break
            except OSError as exc:
                # A node killed a moment ago may still be closing its sockets (its data-dir
                # lock can go first): wait a little for them before calling it a stranger.
                if time.monotonic() > deadline:
                    raise OSError(exc.errno, f"{listen} is in use by another process") from None
        time.sleep(0.1)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.count = settings.worker_count
        self.ctx = multiprocessing.get_context("spawn")
        self.workers = [WorkerHandle(i) for i in range(self.count)]
        self.signals: collections.deque[int] = collections.deque()
        self.metrics: MetricsBlock | None = None
        self.port = 0
        self.http_port = 0
        self.announced = False
        self.draining = False
        self.lock: datadir.DataDirLock | None = None

    # -- signals: handlers only queue -----------------------------------------------------------

    def _on_signal(self, signum: int, _frame) -> None:
        self.signals.append(signum)

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    # -- life ---------------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        raise_fd_limit()
        backend = open_backend(self.settings)
        reservation = http_reservation = None
        try:
            # One node per data directory on SQLite; on a shared catalog, nodes share it.
            self.lock = datadir.acquire(self.settings.data_dir, f"mini-oss serve --listen "
                                        f"{self.settings.listen}", log=log,
                                        shared=backend.shares_data_dir)
            reservation = reserve_port(self.settings.listen)
            self.port = reservation.getsockname()[1]
            self.settings = _with_port(self.settings, self.port)
            if self.settings.http_listen:
                http_reservation = reserve_port(self.settings.http_listen)
                self.http_port = http_reservation.getsockname()[1]
                self.settings = _with_port(self.settings, self.http_port, "http_listen")
            # The URL signing key exists before any worker reads it (node.http.signing).
            signing.load_or_create_key(self.settings.data_dir, self.settings.url_signing_key_file)
            log.info("node %s, %s", self.settings.node_name, backend.describe())
            report = prepare_data_dir(self.settings)
        except (OSError, datadir.DataDirError, CatalogUnavailable, signing.KeyFileError) as exc:
            print(f"mini-oss: error: cannot start: {exc}", file=sys.stderr, flush=True)
            if self.lock is not None:
                self.lock.release()
            for held in (reservation, http_reservation):
                if held is not None:
                    held.close()
            return 1
        if any(report.values()):
            log.info("recovery: %s", report)
        for name, value in WORKER_MALLOC_ENV.items():
            os.environ.setdefault(name, value)  # a user's own setting wins
        self.metrics = MetricsBlock.create(self.count)
        exporter = self._start_exporter()
        try:
            for handle in self.workers:
                self._spawn(handle)
            return self._loop()
        except BootFailure as exc:
            print(f"mini-oss: error: workers cannot boot: {exc}", file=sys.stderr, flush=True)
            self._kill_all()
            return 1
        finally:
            reservation.close()
            if http_reservation is not None:
                http_reservation.close()
            if exporter is not None:
                exporter.shutdown()
            self.metrics.close()

    def _start_exporter(self):
        if not self.settings.metrics_listen:
            return None
        from node.workers.exporter import start_exporter

        server = start_exporter(self.settings.metrics_listen, self.metrics, self)
        host, port = server.server_address[:2]
        log.info("metrics at http://%s:%d/metrics", host, port)
        return server

    def _spawn(self, handle: WorkerHandle) -> None:
        receiver, sender = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(
            target=worker_main, name=f"mini-oss-worker-{handle.worker_id}",
            args=(self.settings, handle.worker_id, self.count,
                  self.metrics.path if self.metrics else None, sender, self.lock))
        process.start()
        sender.close()
        handle.process, handle.conn = process, receiver
        handle.started_at = time.monotonic()
        handle.ready = False
        handle.restart_at = None
        log.info("worker %d started (pid %d)", handle.worker_id, process.pid)

    def _loop(self) -> int:
        while True:
            while self.signals:
                signum = self.signals.popleft()
                if self.draining:
                    log.warning("second signal (%s): killing workers", signal.Signals(signum).name)
                    self._kill_all()
                    return 1
                self._begin_drain(signum)
            if self.draining:
                if all(h.process is None or not h.process.is_alive() for h in self.workers):
                    log.info("all workers stopped")
                    return 0
                if time.monotonic() > self.drain_deadline:
                    log.error("workers did not stop within the grace period: killing them")
                    self._kill_all()
                    return 0
            self._read_messages()
            if not self.draining:
                self._watch()
                if not self.announced and all(h.ready for h in self.workers):
                    lines = [READY_LINE.format(port=self.port)]
                    if self.settings.http_listen:
                        lines.insert(0, HTTP_READY_LINE.format(port=self.http_port))
                    # One write: unbuffered (python -u), print() writes the text and its newline
                    # apart, and a worker's log line on the same pipe could land in between.
                    sys.stdout.write("".join(line + "\n" for line in lines))
                    sys.stdout.flush()
                    self.announced = True

    def _read_messages(self) -> None:
        conns = {h.conn: h for h in self.workers if h.conn is not None}
        for conn in wait(list(conns), timeout=TICK_SECONDS) if conns else []:
            handle = conns[conn]
            try:
                kind, value = conn.recv()
            except (EOFError, OSError):
                conn.close()
                handle.conn = None
                continue
            if kind == "ready":
                handle.ready = True
                handle.boot_failures = 0
                log.info("worker %d serving on port %s", handle.worker_id, value)
            elif kind == "failed":
                handle.reasons.append(str(value))
        if not conns:
            time.sleep(TICK_SECONDS)

    def _watch(self) -> None:
        now = time.monotonic()
        for handle in self.workers:
            process = handle.process
            if handle.restart_at is not None:
                if now >= handle.restart_at:
                    self._spawn(handle)
                continue
            if process is None:
                continue
            if not process.is_alive():
                self._on_exit(handle, process.exitcode, now)
            elif not handle.ready and now - handle.started_at > BOOT_TIMEOUT:
                handle.reasons.append(f"not serving after {BOOT_TIMEOUT:.0f} s")
                process.kill()
            elif handle.ready and self._heartbeat_age(handle) > HEARTBEAT_TIMEOUT:
                log.error("worker %d stopped its heartbeat: replacing it", handle.worker_id)
                process.kill()

    def _heartbeat_age(self, handle: WorkerHandle) -> float:
        if self.metrics is None:
            return 0.0
        return time.time() - self.metrics.slot(handle.worker_id).get("heartbeat")

    def _on_exit(self, handle: WorkerHandle, exitcode: int | None, now: float) -> None:
        process = handle.process
        assert process is not None
        process.join(0)
        if handle.conn is not None:
            self._drain_conn(handle)
        was_ready = handle.ready
        handle.process, handle.ready = None, False
        if self.metrics is not None:
            slot = self.metrics.slot(handle.worker_id)
            slot.set("active_streams", 0)
            slot.set("ready", 0)
        if not was_ready:
            handle.boot_failures += 1
            reason = handle.reasons[-1] if handle.reasons else f"exit status {exitcode}"
            log.error("worker %d could not boot (%d/%d): %s", handle.worker_id,
                      handle.boot_failures, MAX_BOOT_FAILURES, reason)
            # Before the node was ever ready, a boot failure is almost always configuration
            # (a port, a certificate, a token file): retrying cannot fix it.
            if not self.announced or handle.boot_failures >= MAX_BOOT_FAILURES:
                raise BootFailure(reason)
        else:
            log.error("worker %d died (exit status %s): restarting", handle.worker_id, exitcode)
        ran = now - handle.started_at
        handle.backoff = 0.0 if ran > STABLE_SECONDS and was_ready else (
            min(BACKOFF_MAX, handle.backoff * 2) if handle.backoff else BACKOFF_START)
        handle.restart_at = now + (0.0 if was_ready and ran > STABLE_SECONDS else handle.backoff)

    def _drain_conn(self, handle: WorkerHandle) -> None:
        assert handle.conn is not None
        try:
            while handle.conn.poll():
                kind, value = handle.conn.recv()
                if kind == "failed":
                    handle.reasons.append(str(value))
        except (EOFError, OSError):
            pass
        handle.conn.close()
        handle.conn = None

    def _begin_drain(self, signum: int) -> None:
        log.info("%s: draining workers (grace %.1f s)", signal.Signals(signum).name, self.settings.grace)
        self.draining = True
        self.drain_deadline = time.monotonic() + self.settings.grace + DRAIN_MARGIN
        for handle in self.workers:
            handle.restart_at = None
            if handle.process is not None and handle.process.is_alive():
                os.kill(handle.process.pid, signal.SIGTERM)

    def _kill_all(self) -> None:
        for handle in self.workers:
            if handle.process is not None and handle.process.is_alive():
                handle.process.kill()
        for handle in self.workers:
            if handle.process is not None:
                handle.process.join(5)

    def worker_pids(self) -> dict[int, int]:
        return {h.worker_id: h.process.pid for h in self.workers
                if h.process is not None and h.process.is_alive()}


def _with_port(settings: Settings, port: int, field: str = "listen") -> Settings:
    """The settings with the bound port in `field` (and, for gRPC, the default node name)."""
    import dataclasses

    host, _ = split_host_port(getattr(settings, field))
    host = f"[{host}]" if ":" in host else host
    changes = {field: f"{host}:{port}"}
    if field == "listen":
        changes["node_name"] = settings.node_name or f"{socket.gethostname()}:{port}"
    return dataclasses.replace(settings, **changes)


def run(settings: Settings) -> int:
    """`mini-oss serve`."""
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, settings.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    log.info("settings: %s", settings.describe())
    return Supervisor(settings).run()
