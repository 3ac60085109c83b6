"""The bare sendfile ceiling: the best an HTTP/1.1 sender can do on this machine.

Why: the node's HTTP downloads go out with os.sendfile through aiohttp; a figure for them means
something only next to a server that does nothing *but* sendfile, with the node's process
layout, measured by the same load generator in the same session (tools.bench.http_compare).

Shape (the node's, minus everything else):

* N worker processes share one port with SO_REUSEPORT: the parent reserves it with a bound,
  non-listening socket (node.workers.supervisor.reserve_port, so port 0 becomes a real port),
  starts the workers (spawn), waits for each to listen, then prints the node's HTTP ready line
  `mini-oss HTTP server started at :PORT` and logs `worker N started (pid P)` on stderr.
* Each worker is one thread, one `selectors` (epoll) loop over non-blocking sockets. No auth,
  no ranges, no routing beyond the method:
  - GET/HEAD of any path: 200 with one file (the whole of it) by `os.sendfile`, called again
    whenever the socket is writable, exactly as asyncio's `loop.sendfile` does for the node.
  - tus sink (for the tus upload bench's ceiling and its test): `POST` answers 201 with a
    Location, `PATCH` reads the body into one reusable buffer (`recv_into`) and drops it, then
    answers 204 with `Upload-Offset`; `OPTIONS` answers the tus version.
  - Keep-alive throughout; a connection ends when the client closes it.
* The file: `--file PATH`, or a temp file of `--object-size` random bytes written at start
  under `--data-root` (in the page cache from then on: warm) and deleted at exit.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import selectors
import signal
import socket
import sys
import tempfile
import time

READY_LINE = "mini-oss HTTP server started at :{port}"
MiB = 1024 ** 2
RECV_BUFFER = 1 * MiB
MAX_HEADER = 64 * 1024


class Conn:
    """One client connection's state: the request being read, or the reply being sent."""

    __slots__ = ("sock", "inbuf", "out", "file_left", "file_offset", "drain", "after_drain")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.out = b""            # reply header (and tiny bodies) still to send
        self.file_left = 0        # sendfile bytes still to send
        self.file_offset = 0
        self.drain = 0            # request body bytes still to read and drop (tus PATCH)
        self.after_drain = b""    # the reply once the body is read


class Worker:
    def __init__(self, sock: socket.socket, fd: int, size: int) -> None:
        self.listener = sock
        self.fd = fd
        self.size = size
        self.sel = selectors.DefaultSelector()
        self.scratch = memoryview(bytearray(RECV_BUFFER))
        self.uploads: dict[str, int] = {}   # tus sink: upload path -> declared length
        self.next_upload = 0

    def serve(self) -> None:
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        while True:
            for key, events in self.sel.select():
                if key.data is None:
                    self._accept()
                    continue
                conn = key.data
                try:
                    if events & selectors.EVENT_WRITE:
                        self._write(conn)
                    if events & selectors.EVENT_READ:
                        self._read(conn)
                except (ConnectionError, OSError):
                    self._close(conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock)
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _close(self, conn: Conn) -> None:
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _read(self, conn: Conn) -> None:
        n = conn.sock.recv_into(self.scratch)
        if n == 0:
            self._close(conn)
            return
        if conn.drain:  # a tus PATCH body: counted and dropped
            used = min(n, conn.drain)
            conn.drain -= used
            if conn.drain == 0:
                self._reply(conn, conn.after_drain)
            return
        conn.inbuf += self.scratch[:n]
        end = conn.inbuf.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.inbuf) > MAX_HEADER:
                self._close(conn)
            return
        head, rest = bytes(conn.inbuf[:end]), len(conn.inbuf) - end - 4
        conn.inbuf = bytearray()
        self._request(conn, head, rest)

    def _request(self, conn: Conn, head: bytes, body_read: int) -> None:
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "0") or 0)
        if method in ("GET", "HEAD"):
            conn.out = (f"HTTP/1.1 200 OK\r\nContent-Length: {self.size}\r\n"
                        "Content-Type: application/octet-stream\r\n\r\n").encode()
            if method == "GET":
                conn.file_offset, conn.file_left = 0, self.size
            self._write(conn)
            return
        if method == "POST":
            self.next_upload += 1
            where = f"/v1/tus/bare-{os.getpid()}-{self.next_upload}"
            self.uploads[where] = int(headers.get("upload-length", "0") or 0)
            reply = f"HTTP/1.1 201 Created\r\nLocation: {where}\r\nTus-Resumable: 1.0.0\r\n" \
                    "Upload-Offset: 0\r\nContent-Length: 0\r\n\r\n"
        elif method == "PATCH":
            end = int(headers.get("upload-offset", "0") or 0) + length
            reply = f"HTTP/1.1 204 No Content\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: {end}\r\n\r\n"
            if self.uploads.get(path) == end:
                del self.uploads[path]
        elif method == "OPTIONS":
            reply = ("HTTP/1.1 204 No Content\r\nTus-Resumable: 1.0.0\r\nTus-Version: 1.0.0\r\n"
                     "Tus-Extension: creation\r\n\r\n")
        else:
            reply = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        left = length - body_read
        if left > 0:
            conn.drain, conn.after_drain = left, reply.encode()
        else:
            self._reply(conn, reply.encode())

    def _reply(self, conn: Conn, data: bytes) -> None:
        conn.out = data
        self._write(conn)

    def _write(self, conn: Conn) -> None:
        """Send what the socket takes now; wait for writable if anything is left."""
        while conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except BlockingIOError:
                return self._want(conn, selectors.EVENT_WRITE)
            conn.out = conn.out[sent:]
        while conn.file_left:
            try:
                sent = os.sendfile(conn.sock.fileno(), self.fd, conn.file_offset, conn.file_left)
            except BlockingIOError:
                return self._want(conn, selectors.EVENT_WRITE)
            if sent == 0:
                raise ConnectionError("sendfile sent nothing: the file shrank or the peer left")
            conn.file_offset += sent
            conn.file_left -= sent
        self._want(conn, selectors.EVENT_READ)

    def _want(self, conn: Conn, events: int) -> None:
        if self.sel.get_key(conn.sock).events != events:
            self.sel.modify(conn.sock, events, conn)


def worker_main(host: str, port: int, path: str, ready) -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    fd = os.open(path, os.O_RDONLY)
    ready.send("ready")
    ready.close()
    Worker(sock, fd, os.fstat(fd).st_size).serve()


def make_file(size: int, data_root: str) -> str:
    """A temp file of `size` bytes (a random 1 MiB block repeated): in the page cache after."""
    fd, path = tempfile.mkstemp(prefix="bare-sendfile-", dir=data_root or None)
    block = random.Random("bare-sendfile").randbytes(MiB)
    with os.fdopen(fd, "wb") as fh:
        left = size
        while left:
            left -= fh.write(block[:min(left, MiB)])
    return path


def main(argv: list[str] | None = None) -> int:
    from node.config import split_host_port
    from node.workers.supervisor import reserve_port
    from tools.bench.cli import parse_size

    p = argparse.ArgumentParser(prog="python -m tools.bench.bare_sendfile",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--file", default="", help="serve this file (default: a temp file of --object-size)")
    p.add_argument("--object-size", type=parse_size, default=256 * MiB, help="size of the temp file")
    p.add_argument("--data-root", default="", help="directory of the temp file (default: system temp)")
    args = p.parse_args(argv)
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    path = args.file or make_file(args.object_size, args.data_root)
    host, _ = split_host_port(args.listen)
    reservation = reserve_port(args.listen)
    port = reservation.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    workers = []
    status = 0
    try:
        for worker_id in range(args.workers):
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=worker_main, name=f"bare-sendfile-{worker_id}",
                               args=(host, port, path, sender))
            proc.start()
            sender.close()
            workers.append(proc)
            print(f"worker {worker_id} started (pid {proc.pid})", file=sys.stderr, flush=True)
            if not receiver.poll(60) or receiver.recv() != "ready":
                raise RuntimeError(f"worker {worker_id} did not start")
        print(READY_LINE.format(port=port), flush=True)
        while not stopping and all(proc.is_alive() for proc in workers):
            time.sleep(0.2)
        status = 0 if stopping else 1
    except (RuntimeError, EOFError) as exc:
        print(f"bare sendfile: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        for proc in workers:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        for proc in workers:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        reservation.close()
        if not args.file:
            os.unlink(path)
    return status


if __name__ == "__main__":
    sys.exit(main())
