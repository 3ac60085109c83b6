"""The HTTP face of a worker: aiohttp on an event loop of its own, beside the gRPC server.

Why a thread with asyncio's own loop: the gRPC server runs on uvloop, which does not implement
`loop.sendfile` (aiohttp would then copy every byte through user space without a word). On
asyncio's selector loop, `loop.sendfile` is `os.sendfile(2)` straight from the version's open
file to the socket. The two loops share the worker's Store and its I/O thread pool; metrics go
to the worker's slot through the gRPC loop (one writer per slot).

Every worker binds the same port with SO_REUSEPORT (the supervisor reserved it, so `:0` is one
port for all), like gRPC. Drain (`Face.drain`): the listening socket closes, requests on
connections already open are answered 503 DRAINING, running ones get the grace, then every
connection closes.

What is served (API.md, "HTTP"): GET/HEAD /v1/objects/{object_id} (node.http.downloads) and
tus uploads under /v1/tus/ (node.http.tus), with the gRPC tokens or a signed URL
(node.http.signing), JSON errors naming the contract's reason, CORS for the configured origins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from concurrent.futures import Executor
from typing import Any, Callable

from aiohttp import web

from node.auth import Role, TokenTable
from node.config import Settings, split_host_port
from node.errors import Draining, Forbidden, InvalidToken, MissingToken, OssError
from node.http import rules, signing
from node.limits import StreamPlaces

log = logging.getLogger("mini_oss.http")

#: Requests larger than this are refused before they are read (a tus PATCH streams its body
#: and is not bound by it).
MAX_BODY = 1024 * 1024
BACKLOG = 1024
#: After the grace, how long aiohttp may take to cancel what still runs and close connections.
CLOSE_TIMEOUT = 1.0
ALLOWED_HEADERS = ("Authorization, Content-Type, Range, If-Match, If-None-Match, If-Range, "
                   "Upload-Offset, Upload-Length, Upload-Metadata, Upload-Checksum, "
                   "Upload-Defer-Length, Upload-Concat, Tus-Resumable, X-HTTP-Method-Override, "
                   "X-Requested-With")
EXPOSED_HEADERS = ("Content-Range, Content-Length, Content-Disposition, ETag, Repr-Digest, "
                   "Location, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Expires, "
                   "Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, "
                   "Tus-Checksum-Algorithm")


class Face:
    """One worker's HTTP server and what its handlers share."""

    def __init__(self, settings: Settings, store, pool: Executor, *, table: TokenTable | None,
                 events=None, limiter=None) -> None:
        self.settings = settings
        self.store = store
        self.pool = pool
        self.table = table
        self.events = events
        self.limiter = limiter
        self.key = signing.load_or_create_key(settings.data_dir, settings.url_signing_key_file)
        self.origins = {o.strip() for o in settings.http_cors_origins.split(",") if o.strip()}
        self.draining = False
        self._running = 0              # requests inside the middleware (the face's loop only)
        self._quiet = asyncio.Event()  # set while none runs (bound to the face's loop on use)
        self._quiet.set()
        #: Download and upload bodies in flight per client address (max_streams_per_client).
        self.client_streams = StreamPlaces(settings.max_streams_per_client, "HTTP transfers")
        self.loop: asyncio.AbstractEventLoop | None = None
        self.runner: web.AppRunner | None = None
        self._listener: socket.socket | None = None
        self.port = 0
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._failure: BaseException | None = None

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> int:
        """Bind and serve in a thread of its own; returns the bound port."""
        self._thread = threading.Thread(target=self._run, name="mini-oss-http", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise self._failure
        return self.port

    def _run(self) -> None:
        # asyncio's own selector loop, not uvloop: its loop.sendfile is os.sendfile.
        self.loop = asyncio.SelectorEventLoop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._failure = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()
        self.loop.close()

    async def _serve(self) -> None:
        app = self.build_app()
        # The grace is `_close`'s to give; aiohttp's own wait comes after it (and reads a
        # timeout of 0 as none at all).
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                    shutdown_timeout=CLOSE_TIMEOUT)
        await self.runner.setup()
        sock = self._listener = self._socket()
        site = web.SockSite(self.runner, sock, ssl_context=self._ssl_context(), backlog=BACKLOG)
        await site.start()
        self.port = sock.getsockname()[1]

    def _socket(self) -> socket.socket:
        host, port = split_host_port(self.settings.http_listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
        return sock

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.settings.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        return context

    def drain(self, grace: float) -> None:
        """Blocking (call it from a thread): refuse new requests, give running ones `grace`
        seconds, close."""
        if self.loop is None or self.runner is None:
            return
        self.draining = True
        future = asyncio.run_coroutine_threadsafe(self._close(grace), self.loop)
        try:
            future.result(grace + 10)
        except Exception:  # noqa: BLE001 - stopping anyway
            log.exception("HTTP drain failed")
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    async def _close(self, grace: float) -> None:
        """Drain in three steps: stop listening; give the running requests the grace while
        the middleware answers new ones on open connections 503 DRAINING; then let aiohttp
        close every connection, cancelling what still runs.

        Why not `runner.cleanup()` with the grace alone: it marks every connection closing at
        once, and a request that arrives just after on a connection accepted just before is
        dropped unread (aiohttp#2298), and its client waits the whole grace for an answer (a
        client holding a download while it waited stalled that download until the grace cut
        it). A worker orphaned by its supervisor drains with no grace."""
        assert self.runner is not None and self._listener is not None
        # Accepting stops before the site closes, and connections already accepted get their
        # transports first: asyncio's Server.close() leaves a connection whose set-up has not
        # run yet unanswered and unclosed (CPython gh-109564, gh-155934).
        asyncio.get_running_loop().remove_reader(self._listener.fileno())
        for _ in range(3):
            await asyncio.sleep(0)
        for site in list(self.runner.sites):
            await site.stop()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._quiet.wait(), grace)
        await self.runner.cleanup()

    # -- the application ------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        from node.http import downloads, tus

        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
        app.on_response_prepare.append(self._on_prepare)
        downloads.add_routes(app, self)
        tus.add_routes(app, self)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        started = time.monotonic()
        origin = request.headers.get("Origin")
        self._running += 1
        self._quiet.clear()
        try:
            if self.draining:
                raise Draining("the node is stopping")
            if request.method == "OPTIONS" and origin is not None:
                response: web.StreamResponse = web.Response(status=204)
            else:
                response = await handler(request)
        except OssError as err:
            response = error_response(err)
        except web.HTTPException as exc:  # aiohttp's own (unknown path, body too large...)
            response = _http_error(exc)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:  # a bug of ours: 500, never the client's fault
            log.exception("HTTP %s %s failed", request.method, request.path)
            response = error_response(OssError("an internal error"))
        finally:
            self._running -= 1
            if not self._running:
                self._quiet.set()
        if self.draining and not response.prepared:
            response.force_close()  # the connection goes with the node: ask for no next request
        self._count(response.status, time.monotonic() - started)
        return response

    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Just before any response's headers go out (a download sends them itself)."""
        origin = request.headers.get("Origin")
        if origin is not None:
            self._cors(origin, response)

    def _cors(self, origin: str, response: web.StreamResponse) -> None:
        if "*" in self.origins or origin in self.origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, POST, PATCH, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            response.headers["Access-Control-Max-Age"] = "86400"

    def _count(self, status: int, seconds: float) -> None:
        if self.events is None:
            return
        self.events.add(f"http_requests_{min(max(status // 100, 2), 5)}xx")
        self.events.observe("http_request_seconds", seconds)

    def count_bytes(self, name: str, amount: int) -> None:
        if self.events is not None and amount:
            self.events.add(name, amount)

    # -- shared by the handlers ---------------------------------------------------------------

    async def run(self, fn: Callable[..., Any], *args) -> Any:
        """Run blocking node logic in the worker's I/O pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def client(self, request: web.Request) -> str:
        """The caller's host for per-client limits, written as gRPC writes a peer's
        (node.service.client_of): "ipv4:127.0.0.1", "ipv6:[::1]"."""
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if not peer:
            return "unknown"
        return f"ipv6:[{peer[0]}]" if ":" in peer[0] else f"ipv4:{peer[0]}"

    def authorize(self, request: web.Request, role: Role, object_id: str | None) -> str:
        """Check the request may act on `object_id` with `role`; returns the token's prefix
        ("" when unlimited). A signed URL (GET/HEAD only) needs no token; without a token file
        the port is open, as gRPC is. `object_id=None`: a request naming an upload session
        (tus), whose object id the store checks against the returned prefix (its `scope`)."""
        params = request.rel_url.query
        if "signature" in params and request.method in ("GET", "HEAD") and object_id is not None:
            why = signing.check(self.key, request.method, object_id, params, time.time())
            if why is not None:
                raise Forbidden(why)
            return ""
        if self.table is None:
            return ""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise MissingToken("this node requires a token: Authorization: Bearer <token>, "
                               "or a signed URL")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken("the Authorization header must be 'Bearer <token>'")
        grant = self.table.lookup(token.strip())
        if grant is None:
            raise InvalidToken("unknown token")
        if not grant.allows(role):
            raise Forbidden(f"this needs a {role} token; this one is {grant.role}",
                            required_role=str(role))
        if object_id is not None and not grant.covers(object_id):
            raise Forbidden(f"this token is limited to object ids starting with {grant.prefix!r}",
                            prefix=grant.prefix)
        return grant.prefix

    def stream(self, request: web.Request):
        """A body in flight (a download's, a tus upload's) holds one of the client's stream
        places in this worker, as a gRPC stream does (node.limits.StreamPlaces)."""
        return self.client_streams.hold(self.client(request))

    def admit(self, request: web.Request) -> None:
        if self.limiter is not None:
            self.limiter.admit(self.client(request))


def error_response(err: OssError, headers: dict[str, str] | None = None) -> web.Response:
    response = _json(rules.status_of(err), rules.error_body(err), headers)
    if err.retry_delay:
        response.headers["Retry-After"] = str(max(1, round(err.retry_delay)))
    return response


def _json(status: int, body: dict, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, separators=(",", ":")),
                        content_type="application/json", headers=headers)


def _http_error(exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (no such path, a method a path does not take, a body over the
    limit, a request line it cannot parse) in the same JSON shape; no contract reason fits
    them, so `reason` is empty."""
    code = {404: "NOT_FOUND", 405: "INVALID_ARGUMENT", 413: "RESOURCE_EXHAUSTED"}.get(
        exc.status, "INVALID_ARGUMENT")
    return _json(exc.status, {"code": code, "reason": "", "message": exc.reason or ""},
                 {k: v for k, v in exc.headers.items() if k.lower() == "allow"})
