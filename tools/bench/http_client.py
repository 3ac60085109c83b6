"""One HTTP load-generator process: raw keep-alive sockets in one `selectors` (epoll) loop.

Why raw sockets: on 2 shared cores the load generator must cost as little as possible, or it
measures itself. A downloaded body is read with `recv_into` into one reusable 1 MiB buffer per
process and dropped (counted, not copied, not parsed), the cheapest reader Python has; an
upload body is sent straight from the content pool's prebuilt chunks. No HTTP library, no
asyncio: one thread, one epoll, a few lines per event.

Each stream is one TCP connection (HTTP/1.1 keep-alive, one request at a time, as a browser or
curl would) driven by a generator: it yields a `Request`, the pump sends it and reads the
response (status, headers, body length, the first bytes of a body for error messages), and
sends the `Response` back into the generator. A socket error is thrown into the generator,
which counts it and carries on over a new connection.

Modes:
* `get`: GET `/v1/objects/<id>` (ids dealt round robin, or any path against the bare server);
  an object counts when the status is 200 and exactly Content-Length bytes arrived.
* `tus`: tus 1.0.0 core + creation: `POST /v1/tus/` (Upload-Length, Upload-Metadata with the
  object id and file name), then one `PATCH` of the whole object at offset 0 from the Location;
  it counts when the answer is 204 with `Upload-Offset` = size. Contents are distinct per
  object (tools.bench.workload.ContentPool), as in the gRPC upload bench.

Life of a process (tools.bench.http_runner): connect every stream's socket and report the
local ports ("ready": the runner maps them to the server's workers), wait for "go", run until
every stream ends (--count / --duration), then report per-object latencies, bytes, errors and
its own CPU seconds (a `driver.ProcessResult`, so `stats` defines every figure once).
"""

from __future__ import annotations

import base64
import collections
import os
import resource
import selectors
import socket
import time
import traceback
from dataclasses import dataclass, field

from tools.bench.driver import ProcessResult
from tools.bench.workload import ContentPool, object_tag, upload_object_id

RECV_BUFFER = 1024 * 1024
SAMPLE_BYTES = 300           # kept of a body, for error messages
MAX_HEADER = 64 * 1024


@dataclass(frozen=True)
class HttpLoad:
    """What every client process of one HTTP phase needs (pickled to them)."""

    mode: str                       # "get" | "tus"
    host: str
    port: int
    paths: tuple[str, ...] = ()     # get: the paths, dealt round robin per stream
    file_size: int = 0              # tus: object size
    chunk_size: int = 1024 * 1024   # tus: pool chunk size (one send per chunk)
    count: int | None = 1           # objects per stream (None: until the deadline)
    duration: float | None = None
    run_id: str = ""
    tus_path: str = "/v1/tus/"


@dataclass
class Request:
    head: bytes
    body: object = ()               # iterable of bytes-like, sent after the head


@dataclass
class Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    length: int = 0                 # body bytes received
    sample: bytes = b""
    first_byte: float = 0.0         # perf_counter when the header was complete


class HttpError(Exception):
    def __init__(self, label: str, message: str) -> None:
        super().__init__(message)
        self.label = label


class Conn:
    """One stream: its socket, its generator and where the exchange stands."""

    def __init__(self, stream: int, gen, addr: tuple[str, int]) -> None:
        self.stream, self.gen, self.addr = stream, gen, addr
        self.sock = self._connect()
        self.out: collections.deque = collections.deque()
        self.head = bytearray()
        self.resp: Response | None = None
        self.left = 0               # body bytes still expected

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.addr)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return sock


class Pump:
    """The event loop of one process over all its streams."""

    def __init__(self, load: HttpLoad, streams: list[int], result: ProcessResult) -> None:
        self.load = load
        self.result = result
        self.errors: collections.Counter[str] = collections.Counter()
        self.sel = selectors.DefaultSelector()
        self.buf = memoryview(bytearray(RECV_BUFFER))
        self.deadline: float | None = None
        self.pool = None
        if load.mode == "tus":
            self.pool = ContentPool(load.chunk_size, load.file_size, 16, seed=f"{load.run_id}-{os.getpid()}")
        self.conns = [Conn(s, self._stream(s), (load.host, load.port)) for s in streams]

    def local_ports(self) -> list[int]:
        return [c.sock.getsockname()[1] for c in self.conns]

    # -- what a stream does -----------------------------------------------------------------

    def more(self, n: int) -> bool:
        if self.load.count is not None and n >= self.load.count:
            return False
        return self.deadline is None or time.monotonic() < self.deadline

    def fail(self, exc: BaseException) -> None:
        label = exc.label if isinstance(exc, HttpError) else type(exc).__name__
        self.errors[label] += 1
        if len(self.result.error_samples) < 5:
            self.result.error_samples.append(f"{label}: {exc}")

    def done(self, started: float, first: float, size: int) -> None:
        now = time.perf_counter()
        self.result.latencies.append(now - started)
        self.result.first_byte.append(first - started)
        self.result.bytes += size
        self.result.objects += 1

    def _stream(self, stream: int):
        return self._get_stream(stream) if self.load.mode == "get" else self._tus_stream(stream)

    def _get_stream(self, stream: int):
        load, n = self.load, 0
        while self.more(n):
            path = load.paths[(stream + n) % len(load.paths)]
            started = time.perf_counter()
            try:
                resp = yield Request(f"GET {path} HTTP/1.1\r\nHost: {load.host}\r\n\r\n".encode())
                expect(resp, 200)
                want = int(resp.headers.get("content-length", -1))
                if resp.length != want:
                    raise HttpError("CLIENT_SHORT", f"{path}: {resp.length} of {want} bytes")
            except Exception as exc:  # noqa: BLE001 - count every failure by its kind
                self.fail(exc)
            else:
                self.done(started, resp.first_byte, resp.length)
            n += 1

    def _tus_stream(self, stream: int):
        load, pool, n = self.load, self.pool, 0
        assert pool is not None
        while self.more(n):
            object_id = upload_object_id(load.run_id, stream, n)
            spec = pool.spec(object_id, number=stream * 1_000_000 + n,
                             tag=object_tag(load.run_id, os.getpid(), stream, n))
            size = spec.size
            started = time.perf_counter()
            try:
                meta = f"object_id {b64(object_id)},filename {b64('bench.bin')}"
                resp = yield Request(
                    (f"POST {load.tus_path} HTTP/1.1\r\nHost: {load.host}\r\nTus-Resumable: 1.0.0\r\n"
                     f"Upload-Length: {size}\r\nUpload-Metadata: {meta}\r\nContent-Length: 0\r\n\r\n").encode())
                expect(resp, 201)
                where = resp.headers.get("location", "")
                if "://" in where:
                    where = "/" + where.split("://", 1)[1].split("/", 1)[1]
                body = (pool.chunk_data(spec, k, min(pool.chunk_size, size - k * pool.chunk_size))
                        for k in range(pool.chunks_per_object))
                resp = yield Request(
                    (f"PATCH {where} HTTP/1.1\r\nHost: {load.host}\r\nTus-Resumable: 1.0.0\r\n"
                     "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                     f"Content-Length: {size}\r\n\r\n").encode(), body)
                expect(resp, 204)
                if int(resp.headers.get("upload-offset", -1)) != size:
                    raise HttpError("CLIENT_SHORT", f"{object_id}: Upload-Offset "
                                    f"{resp.headers.get('upload-offset')} after {size} bytes")
            except Exception as exc:  # noqa: BLE001 - count every failure by its kind
                self.fail(exc)
            else:
                self.done(started, resp.first_byte, size)
                self.result.committed.append(object_id)
            n += 1

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        if self.load.duration is not None:
            self.deadline = time.monotonic() + self.load.duration
        for conn in self.conns:
            self._advance(conn, None)
        while self.sel.get_map():
            for key, events in self.sel.select():
                conn = key.data
                try:
                    if events & selectors.EVENT_WRITE:
                        self._send(conn)
                    elif events & selectors.EVENT_READ:
                        self._recv(conn)
                except (OSError, HttpError) as exc:
                    self._broken(conn, exc)

    def _advance(self, conn: Conn, resp: Response | None, exc: BaseException | None = None) -> None:
        """Give the stream its response (or error); send its next request, or end it."""
        try:
            req = conn.gen.throw(exc) if exc is not None else conn.gen.send(resp)
        except StopIteration:
            self._unregister(conn)
            conn.sock.close()
            return
        conn.out.clear()
        conn.out.append(memoryview(req.head))
        conn.out.extend(req.body)   # references to the pool's chunks, not copies
        conn.head, conn.resp, conn.left = bytearray(), None, 0
        self._register(conn, selectors.EVENT_WRITE)
        try:
            self._send(conn)
        except OSError as err:
            self._broken(conn, err)

    def _broken(self, conn: Conn, exc: BaseException) -> None:
        """The connection failed mid-exchange: a new one, and the stream hears of it."""
        self._unregister(conn)
        conn.sock.close()
        try:
            conn.sock = conn._connect()
        except OSError as err:
            exc = err
            conn.gen.close()
            self.fail(exc)
            return
        self._advance(conn, None, exc)

    def _register(self, conn: Conn, events: int) -> None:
        try:
            key = self.sel.get_key(conn.sock)
        except KeyError:
            self.sel.register(conn.sock, events, conn)
            return
        if key.events != events:
            self.sel.modify(conn.sock, events, conn)

    def _unregister(self, conn: Conn) -> None:
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass

    def _send(self, conn: Conn) -> None:
        while conn.out:
            piece = conn.out[0]
            if not isinstance(piece, memoryview):
                piece = conn.out[0] = memoryview(piece)
            try:
                sent = conn.sock.send(piece)
            except BlockingIOError:
                return
            if sent < len(piece):
                conn.out[0] = piece[sent:]
                return
            conn.out.popleft()
        self._register(conn, selectors.EVENT_READ)

    def _recv(self, conn: Conn) -> None:
        want = RECV_BUFFER if conn.resp is None else min(RECV_BUFFER, conn.left)
        n = conn.sock.recv_into(self.buf, want)
        if n == 0:
            raise ConnectionResetError("the server closed the connection")
        if conn.resp is not None:   # the body: counted, dropped (a sample kept for errors)
            self._body(conn, self.buf[:n])
            return
        conn.head += self.buf[:n]
        end = conn.head.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.head) > MAX_HEADER:
                raise HttpError("CLIENT_HEADER", "no end of the response header")
            return
        conn.resp = parse_head(bytes(conn.head[:end]))
        conn.resp.first_byte = time.perf_counter()
        conn.left = int(conn.resp.headers.get("content-length", 0) or 0)
        rest = memoryview(conn.head)[end + 4:]
        conn.head = bytearray()
        self._body(conn, rest)

    def _body(self, conn: Conn, data: memoryview) -> None:
        resp = conn.resp
        assert resp is not None
        if len(resp.sample) < SAMPLE_BYTES and resp.status >= 300:
            resp.sample += bytes(data[:SAMPLE_BYTES - len(resp.sample)])
        resp.length += len(data)
        conn.left -= len(data)
        if conn.left <= 0:
            self._advance(conn, resp)


def parse_head(head: bytes) -> Response:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HttpError("CLIENT_HEADER", f"not a status line: {lines[0][:80]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return Response(status=int(parts[1]), headers=headers)


def expect(resp: Response, status: int) -> None:
    if resp.status != status:
        raise HttpError(f"HTTP_{resp.status}", f"expected {status}, got {resp.status}: "
                        + resp.sample.decode(errors="replace")[:200])


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def client_main(load: HttpLoad, process: int, streams: list[int], ready, go, results) -> None:
    """Entry point of a spawned client process (the module doc tells its life)."""
    result = ProcessResult(process=process, pid=os.getpid())
    try:
        pump = Pump(load, streams, result)
    except Exception:  # noqa: BLE001 - reported to the runner
        ready.put((process, traceback.format_exc(), []))
        return
    ready.put((process, "", pump.local_ports()))
    go.wait()
    try:
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        result.start = time.time()
        pump.run()
        result.end = time.time()
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        result.cpu_seconds = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
        result.rss_peak_bytes = usage1.ru_maxrss * 1024
        result.errors = dict(pump.errors)
        result.channels = [{"channel": s, "worker_id": None, "streams": 1} for s in streams]
    except Exception:  # noqa: BLE001 - reported to the runner
        result.failure = traceback.format_exc()
    results.put(result)
