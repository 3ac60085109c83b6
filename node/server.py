"""One worker's gRPC server: grpc.aio on uvloop, the oss.v1 servicer, health and reflection.

`serve()` runs inside a worker process (see `node.workers`): it serves until SIGTERM, then
drains in phases — health NOT_SERVING, new calls refused with UNAVAILABLE/DRAINING, running
streams given `grace` seconds, then cancelled (each cancelled Upload checkpoints what it
verified) — and returns 0. `mini-oss serve` itself is the supervisor, which imports none of this.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from node.auth import AuthInterceptor, load_token_file
from node.config import Settings, split_host_port
from node.pb import oss_pb2
from node.limits import raise_fd_limit
from node.metrics import LoopForwarder
from node.one_message import OneMessageInterceptor
from node.ratelimit import RateLimiter
from node.service import ObjectStorageServicer, generic_handler
from node.store import Store

log = logging.getLogger("mini_oss.server")
SERVICE_NAME = oss_pb2.DESCRIPTOR.services_by_name["ObjectStorage"].full_name


def grpc_options(settings: Settings) -> list[tuple[str, object]]:
    limit = settings.grpc_message_limit
    return [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        # Notice dead clients: ping idle connections, and accept clients' own pings.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_pings_without_data", 0),
        # No bandwidth-delay probing: it grows each connection's receive window whenever the
        # node reads slower than clients send (the disk is slower than loopback), and at 100
        # streams that buffered 7-9 GB per worker (tools/bench/RESULTS.md). With the default
        # window, flow control pushes back on the clients instead and memory stays flat.
        ("grpc.http2.bdp_probe", 0),
        # One connection may not open unbounded streams (each can pin a file and chunk
        # buffers); the client queues calls above this until one ends.
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
    ]


def setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")


class TlsConfigError(ValueError):
    """The TLS certificate or key cannot be used; the message names the file."""


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from `tls_cert`/`tls_key`, checked now (gRPC itself would only fail at
    the first handshake): both readable, PEM, and the key belonging to the certificate."""
    if not settings.tls_cert:
        return None
    pems = []
    for what, path in (("certificate", settings.tls_cert), ("key", settings.tls_key)):
        try:
            with open(path, "rb") as f:
                pems.append(f.read())
        except OSError as exc:
            raise TlsConfigError(f"cannot read TLS {what} {path!r}: {exc.strerror or exc}") from None
    cert, key = pems

    def encrypted() -> bytes:  # called only for a passphrase-protected key: never prompt
        raise TlsConfigError(f"TLS key {settings.tls_key!r} is encrypted: give an unencrypted key")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key, password=encrypted)
    except TlsConfigError:
        raise
    except (ssl.SSLError, OSError, ValueError) as exc:
        # (ssl's message names at most a file and an OpenSSL reason, never the content)
        raise TlsConfigError(f"TLS certificate {settings.tls_cert!r} and key {settings.tls_key!r} "
                             f"cannot be used together: {getattr(exc, 'reason', None) or exc}") from None
    if os.stat(settings.tls_key).st_mode & 0o077:
        log.warning("TLS key %r is readable or writable by other users: chmod 600 it",
                    settings.tls_key)
    return grpc.ssl_server_credentials([(key, cert)])


class Worker:
    """A running gRPC server and what it needs to drain."""

    def __init__(self, settings: Settings, *, worker_id: int = 0, workers: int = 1,
                 metrics=None) -> None:
        self.settings = settings
        # Security first: a token file or certificate that cannot be used stops the boot,
        # with a reason naming the file (never a token), before anything else is built.
        self.credentials = server_credentials(settings)
        table = load_token_file(settings.auth_token_file) if settings.auth_token_file else None
        self.pool = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="oss-io")
        self.put_pool = ThreadPoolExecutor(settings.put_threads, thread_name_prefix="oss-put")
        events = LoopForwarder(asyncio.get_running_loop(), metrics) if metrics is not None else None
        self.store = Store(settings, events=events)
        limiter = None
        if settings.rate_limit_requests > 0 or settings.rate_limit_bytes > 0:
            limiter = RateLimiter(settings)
        self.servicer = ObjectStorageServicer(self.store, self.pool, put_pool=self.put_pool,
                                              workers=workers, worker_id=worker_id,
                                              metrics=metrics, limiter=limiter)
        # First: it must see the handler every later interceptor returns (see node.one_message).
        interceptors: list[grpc.aio.ServerInterceptor] = [
            OneMessageInterceptor(settings.stream_idle_timeout, limiter=limiter,
                                  on_error=self.servicer.metrics.error)]
        if table is not None:
            log.info("auth: %d tokens from %r (%s)", len(table), settings.auth_token_file,
                     table.summary())
            interceptors.append(AuthInterceptor(table, limiter=limiter,
                                                on_error=self.servicer.metrics.error))
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(options=grpc_options(settings),
                                      interceptors=interceptors)
        self.server.add_generic_rpc_handlers((generic_handler(self.servicer),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self._sweeper: asyncio.Task | None = None
        self.port = 0
        #: The HTTP face (node.http.face), on a thread and event loop of its own.
        self.face = None
        if settings.http_listen:
            from node.http.face import Face

            self.face = Face(settings, self.store, self.pool, table=table, events=events,
                             limiter=RateLimiter(settings) if limiter is not None else None)

    async def start(self) -> int:
        host, port = split_host_port(self.settings.listen)
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.credentials is not None:
            self.port = self.server.add_secure_port(bind, self.credentials)
        else:
            self.port = self.server.add_insecure_port(bind)
        if not self.port:
            raise OSError(f"could not bind {self.settings.listen}")
        await self.server.start()
        if self.face is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.face.start)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._sweeper = asyncio.create_task(self._sweep_forever())
        return self.port

    async def _sweep_forever(self) -> None:
        """Expire idle sessions every sweep interval (at most half the TTL, so a session is
        freed soon after it expires); the sweep lock makes one worker at a time do it."""
        s = self.settings
        interval = min(s.sweep_interval, max(s.session_ttl / 2, 0.05))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                await loop.run_in_executor(self.pool, self.store.sweep)
            except Exception:  # keep sweeping: one failed pass must not end expiry for good
                log.exception("session sweep failed")

    async def drain(self, grace: float) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.servicer.draining = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        closing = [self.server.stop(grace)]
        if self.face is not None:
            closing.append(asyncio.get_running_loop().run_in_executor(None, self.face.drain, grace))
        await asyncio.gather(*closing)
        # Cancelled uploads queue their checkpoints in the pool: let them finish first.
        await self.servicer.wait_for_cleanups(timeout=30.0)
        for pool in (self.put_pool, self.pool):
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown, True)
        self.store.close()


async def serve(settings: Settings, *, on_ready: Callable[[int], None] | None = None,
                worker_id: int = 0, workers: int = 1, metrics=None) -> int:
    """Serve until SIGTERM, then drain. Escalation (a second signal) is the supervisor's job:
    it kills a worker that does not stop, so a repeated SIGTERM here changes nothing."""
    soft, hard = raise_fd_limit()  # every stream holds files: take what the hard limit allows
    log.info("worker %d: file descriptor limit %d (hard %d)", worker_id, soft, hard)
    worker = Worker(settings, worker_id=worker_id, workers=workers, metrics=metrics)
    port = await worker.start()
    stop = asyncio.Event()
    grace = settings.grace

    def orphaned() -> None:
        # The supervisor died (SIGUSR1 from PR_SET_PDEATHSIG, see node.workers.worker): nobody
        # waits for a graceful end, and a new node may be waiting for the data directory.
        nonlocal grace
        grace = 0.0
        stop.set()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, orphaned)
    if on_ready is not None:
        on_ready(port)
    await stop.wait()
    log.info("worker %d draining: running streams get %.1f s", worker_id, grace)
    await worker.drain(grace)
    log.info("worker %d stopped", worker_id)
    return 0


def event_loop_factory():
    try:
        import uvloop
    except ImportError:  # a declared dependency; fall back rather than refuse to start
        log.warning("uvloop not available: using the default event loop")
        return None
    return uvloop.new_event_loop
