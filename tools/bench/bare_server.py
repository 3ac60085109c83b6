"""The bare gRPC ceiling: the oss.v1 service doing nothing but moving messages.

Why: every node figure is read as a fraction of what gRPC itself can do on this machine with the
same process layout. So this server has the node's shape and nothing else:

* N worker processes share one port with SO_REUSEPORT, exactly like the node: the parent
  reserves the port with a bound, non-listening SO_REUSEPORT socket (port 0 becomes a real
  port), spawns the workers (`spawn`: no gRPC before a fork; the parent imports none), and each
  worker creates its own grpc.aio server (uvloop, as the node) with `grpc.so_reuseport` and the
  node's message limits. It prints the node's ready line, `mini-oss gRPC server started at
  :PORT`, and logs `worker N started (pid P)` on stderr.
* Upload is a sink: the first message is parsed (for its upload_id), the rest are counted as
  raw bytes and dropped, never decoded. CreateUploadSession hands out an upload_id that
  carries the declared size, so the UploadResponse reports a committed object of that size.
* PutObject (a whole small object in one message) is parsed and answered with a committed
  object of the data's size: the same single call the node's small-object bench makes.
* Download is a source: one prebuilt random buffer of `--chunk-size` bytes with its CRC-32,
  repeated up to the object's size (`--object-size`; StatObject reports it, with the SHA-256
  of that repeated content, so clients verify exactly as against the node). Each message is
  serialised once per (offset, length) and cached (up to `--cache-mib` per worker), so a
  download sends prebuilt bytes: what remains is gRPC's own cost.
* `--verify-sink`: Upload and PutObject do what the node must do to every byte and nothing
  more (decode, CRC-32, offsets, SHA-256 in a thread pool): tools/bench/verifying_sink.py says
  how.
* `--read-source`: Download does what the node must do to every byte it serves from the page
  cache and nothing more (read, CRC-32, encode; no message kept): tools/bench/reading_source.py
  says how.
* Its workers run with glibc malloc tuned (MALLOC_TUNING below; `--plain-malloc` to compare).
* GetNodeInfo answers with `worker_id` (so benches see how connections landed), StatObject,
  DeleteObject and the session calls answer trivially so the same client code works.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time

from node.config import Settings, split_host_port
from node.workers.supervisor import WORKER_MALLOC_ENV, reserve_port

READY_LINE = "mini-oss gRPC server started at :{port}"
KiB, MiB = 1024, 1024 ** 2
VERSION = "bare-grpc-ceiling"
MAX_CHUNK = Settings().max_chunk_size   # the node's default
SERVICE = "oss.v1.ObjectStorage"
#: glibc settings for the workers (unless --plain-malloc): the node's own (WORKER_MALLOC_ENV
#: says why). The ceiling is what gRPC can do here at best, so it runs with them.
MALLOC_TUNING = WORKER_MALLOC_ENV


def server_options() -> list[tuple[str, object]]:
    """The node's own gRPC server options (node.server.grpc_options with default settings):
    the ceiling must differ from the node only in what the handlers do. (A copy kept here
    once missed the node's `bdp_probe = 0`, and the ceiling swung 0.9-3.2 GB/s with its
    workers' RSS at 2-10 GB.)"""
    from node.config import Settings
    from node.server import grpc_options

    return grpc_options(Settings())


def source_buffer(chunk_size: int) -> bytes:
    """The bytes the source repeats: the same in every worker and in the reading source's file,
    so a StatObject answered by one worker matches a Download served by another."""
    return random.Random(f"bare-{chunk_size}").randbytes(chunk_size)


def upload_size(upload_id: str) -> int:
    """The object size CreateUploadSession put in the upload_id (`bare-SIZE-...`); 0 if none."""
    try:
        return int(upload_id.split("-")[1])
    except (IndexError, ValueError):
        return 0


# -- the worker (imports gRPC) ----------------------------------------------------------------


class Source:
    """The one object every download reads: `buffer` repeated up to `size` bytes."""

    def __init__(self, size: int, chunk_size: int, cache_bytes: int) -> None:
        import hashlib

        from node.checksums import crc32
        from tools.bench import codec

        self.codec = codec
        self.size = size
        self.buffer = source_buffer(chunk_size)
        self.crc = crc32(self.buffer)
        self.cache: dict[tuple[int, int], bytes] = {}
        self.cache_bytes = cache_bytes
        self.cached = 0
        hasher = hashlib.sha256()
        whole, rest = divmod(size, chunk_size)
        for _ in range(whole):
            hasher.update(self.buffer)
        hasher.update(self.buffer[:rest])
        self.sha256 = hasher.hexdigest()

    def data(self, offset: int, length: int) -> tuple[bytes, int]:
        """Content of [offset, offset + length): the buffer itself when aligned (the hot case)."""
        from node.checksums import crc32

        n = len(self.buffer)
        start = offset % n
        if start == 0 and length == n:
            return self.buffer, self.crc
        out = bytearray()
        while len(out) < length:
            piece = self.buffer[start:start + length - len(out)]
            out += piece
            start = 0
        data = bytes(out)
        return data, crc32(data)

    def message(self, offset: int, length: int, info: bytes | None = None) -> bytes:
        """A serialised DownloadChunk; cached unless it carries ObjectInfo."""
        key = (offset, length)
        if info is None:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        data, crc = self.data(offset, length)
        parts = [b"\x08" + self.codec.varint(offset)] if offset else []
        parts += [b"\x12", self.codec.varint(length), data, b"\x18", self.codec.varint(crc)]
        if info is not None:
            parts += [b"\x22", self.codec.varint(len(info)), info]
        msg = b"".join(parts)
        if info is None and self.cached + len(msg) <= self.cache_bytes:
            self.cache[key] = msg
            self.cached += len(msg)
        return msg


class BareServicer:
    def __init__(self, pb, worker_id: int, workers: int, source: Source, chunk_size: int) -> None:
        self.pb = pb
        self.worker_id = worker_id
        self.workers = workers
        self.source = source
        self.chunk_size = chunk_size
        self.received = 0
        self.sent = 0

    def info(self, object_id: str):
        return self.pb.ObjectInfo(object_id=object_id, file_name="bare.bin", size=self.source.size,
                                  sha256=self.source.sha256, generation="bare",
                                  created_at_unix_ms=int(time.time() * 1000))

    async def create_upload_session(self, request, context):
        import secrets

        upload_id = f"bare-{request.file_size}-{secrets.token_hex(8)}"
        return self.pb.UploadSession(upload_id=upload_id, object_id=request.object_id,
                                     file_name=request.file_name, file_size=request.file_size,
                                     chunk_size=request.chunk_size or self.chunk_size,
                                     state=self.pb.UploadSession.ACTIVE)

    async def upload(self, request_iterator, context):
        first = None
        async for raw in request_iterator:
            if first is None:
                first = self.pb.UploadChunk.FromString(raw)
            self.received += len(raw)
        upload_id = first.upload_id if first is not None else ""
        return self.committed(upload_id, upload_size(upload_id))

    async def put_object(self, request, context):
        """Parsed (the node must parse it too), nothing checked: a committed object of the
        data's size."""
        self.received += len(request.data)
        return self.put_committed(request, len(request.data))

    def put_committed(self, request, size: int, sha256: str = ""):
        """The PutObjectResponse of a committed object of `size` bytes."""
        obj = self.pb.ObjectInfo(object_id=request.object_id, file_name=request.file_name, size=size,
                                 sha256=sha256, generation="bare")
        return self.pb.PutObjectResponse(object=obj)

    def committed(self, upload_id: str, size: int, sha256: str = ""):
        """The UploadResponse of a committed object of `size` bytes."""
        session = self.pb.UploadSession(upload_id=upload_id, file_size=size, uploaded_offset=size,
                                        state=self.pb.UploadSession.COMMITTED)
        obj = self.pb.ObjectInfo(size=size, sha256=sha256, generation=upload_id)
        return self.pb.UploadResponse(session=session, object=obj)

    async def download(self, request, context):
        size = self.source.size
        start = request.start_offset if request.start_offset >= 0 else max(0, size + request.start_offset)
        end = min(request.end_offset, size) if request.HasField("end_offset") else size
        chunk = max(4 * KiB, min(request.chunk_size or self.chunk_size, MAX_CHUNK))
        info = self.info(request.object_id).SerializeToString()
        offset = start
        if start >= end:
            yield self.chunk_message(start, 0, info)
            return
        while offset < end:
            length = min(chunk, end - offset)
            msg = self.chunk_message(offset, length, info)
            info = None
            self.sent += len(msg)
            yield msg
            offset += length

    def chunk_message(self, offset: int, length: int, info: bytes | None) -> bytes:
        """The DownloadChunk of [offset, offset + length) (with `info`, the first): prebuilt."""
        return self.source.message(offset, length, info)

    async def stat_object(self, request, context):
        return self.info(request.object_id)

    async def get_node_info(self, request, context):
        return self.pb.NodeInfo(version=VERSION, default_chunk_size=self.chunk_size,
                                max_chunk_size=MAX_CHUNK, max_object_size=1 << 40,
                                checksums=["crc32"], workers=self.workers, worker_id=self.worker_id)

    async def delete_object(self, request, context):
        return self.pb.DeleteObjectResponse()

    async def abort_upload_session(self, request, context):
        return self.pb.AbortUploadSessionResponse()

    async def get_upload_session(self, request, context):
        return self.pb.UploadSession(upload_id=request.upload_id, state=self.pb.UploadSession.ABORTED)

    async def list_objects(self, request, context):
        return self.pb.ListObjectsResponse()

    async def list_upload_sessions(self, request, context):
        return self.pb.ListUploadSessionsResponse()

    def handler(self):
        import grpc

        pb = self.pb

        def unary(fn, req):
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req.FromString,
                                                       response_serializer=lambda m: m.SerializeToString())
        return grpc.method_handlers_generic_handler(SERVICE, {
            "CreateUploadSession": unary(self.create_upload_session, pb.CreateUploadSessionRequest),
            "GetUploadSession": unary(self.get_upload_session, pb.GetUploadSessionRequest),
            "AbortUploadSession": unary(self.abort_upload_session, pb.AbortUploadSessionRequest),
            # Upload: raw bytes in (no decode), a small protobuf out.
            "Upload": grpc.stream_unary_rpc_method_handler(
                self.upload, request_deserializer=None,
                response_serializer=lambda m: m.SerializeToString()),
            # Download: a protobuf request in, prebuilt bytes out.
            "Download": grpc.unary_stream_rpc_method_handler(
                self.download, request_deserializer=pb.DownloadRequest.FromString,
                response_serializer=None),
            # PutObject: a whole small object in, parsed like any unary request.
            "PutObject": unary(self.put_object, pb.PutObjectRequest),
            "StatObject": unary(self.stat_object, pb.StatObjectRequest),
            "ListObjects": unary(self.list_objects, pb.ListObjectsRequest),
            "DeleteObject": unary(self.delete_object, pb.DeleteObjectRequest),
            "ListUploadSessions": unary(self.list_upload_sessions, pb.ListUploadSessionsRequest),
            "GetNodeInfo": unary(self.get_node_info, pb.GetNodeInfoRequest),
        })


def worker_main(listen: str, worker_id: int, workers: int, object_size: int, chunk_size: int,
                cache_bytes: int, conn, extra_options: tuple = (), verify_sink: bool = False,
                read_source: str = "") -> None:
    """A spawned worker: its own grpc.aio server on the shared port; SIGTERM stops it."""
    import asyncio

    import grpc

    from node.pb import oss_pb2

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def main() -> None:
        source = Source(object_size, chunk_size, cache_bytes)
        if verify_sink:
            from tools.bench.verifying_sink import VerifyingServicer
            servicer = VerifyingServicer(oss_pb2, worker_id, workers, source, chunk_size)
        elif read_source:
            from tools.bench.reading_source import ReadingServicer
            servicer = ReadingServicer(oss_pb2, worker_id, workers, source, chunk_size, read_source)
        else:
            servicer = BareServicer(oss_pb2, worker_id, workers, source, chunk_size)
        server = grpc.aio.server(options=server_options() + list(extra_options))
        server.add_generic_rpc_handlers((servicer.handler(),))
        port = server.add_insecure_port(listen)
        if not port:
            raise OSError(f"could not bind {listen}")
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        conn.send(("ready", port))
        await stop.wait()
        await server.stop(1.0)
        print(f"bare worker {worker_id}: received {servicer.received} bytes, sent {servicer.sent}",
              file=sys.stderr, flush=True)

    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
    except BaseException as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise


# -- the parent (no gRPC) ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    from tools.bench.cli import parse_size

    p = argparse.ArgumentParser(prog="python -m tools.bench.bare_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: one per core)")
    p.add_argument("--object-size", type=parse_size, default=256 * MiB,
                   help="size of the object every download reads (default 256MiB)")
    p.add_argument("--chunk-size", type=parse_size, default=1 * MiB,
                   help="prebuilt buffer size = default message size (default 1MiB)")
    p.add_argument("--cache-mib", type=int, default=512,
                   help="serialised download messages cached per worker (default %(default)s MiB)")
    p.add_argument("--grpc-arg", action="append", default=[], metavar="KEY=INT",
                   help="extra gRPC server option for experiments (repeatable), e.g. grpc.http2.bdp_probe=0")
    handlers = p.add_mutually_exclusive_group()  # two different servers: one at a time
    handlers.add_argument("--verify-sink", action="store_true",
                          help="Upload decodes each chunk, checks its CRC-32 and offset and hashes "
                               "the object's SHA-256 in a pool, as the node does; PutObject checks "
                               "its data's CRC-32 and SHA-256 the same way "
                               "(tools/bench/verifying_sink.py)")
    handlers.add_argument("--read-source", action="store_true",
                          help="Download reads each chunk from a file of the object's content (in "
                               "the page cache), checksums and encodes it, as the node does "
                               "(tools/bench/reading_source.py)")
    p.add_argument("--source-dir", default="",
                   help="where --read-source writes its file, deleted at exit (default: system temp)")
    p.add_argument("--plain-malloc", action="store_true",
                   help="do not give the workers the glibc malloc settings (MALLOC_TUNING)")
    args = p.parse_args(argv)
    if not args.plain_malloc:
        for key, value in MALLOC_TUNING.items():
            os.environ.setdefault(key, value)  # inherited by the spawned workers
    host, _port = split_host_port(args.listen)
    reservation = reserve_port(args.listen)
    port = reservation.getsockname()[1]
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))

    extra = tuple((key, int(value)) for key, value in (a.split("=", 1) for a in args.grpc_arg))
    source_file = ""
    if args.read_source:
        from tools.bench.reading_source import write_source_file

        fd, source_file = tempfile.mkstemp(prefix="mini-oss-bench-source-", dir=args.source_dir or None)
        os.close(fd)
    try:
        if source_file:
            write_source_file(source_file, args.object_size, args.chunk_size)
        return _run_workers(args, listen, port, extra, source_file, stopping)
    finally:
        reservation.close()
        if source_file:
            os.unlink(source_file)


def _run_workers(args, listen: str, port: int, extra: tuple, source_file: str,
                 stopping: list[int]) -> int:
    """Start the workers, print the ready line once all serve, wait for a signal, stop them."""
    ctx = multiprocessing.get_context("spawn")
    workers = []
    for worker_id in range(args.workers):
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=worker_main, name=f"bare-worker-{worker_id}", args=(
            listen, worker_id, args.workers, args.object_size, args.chunk_size,
            args.cache_mib * MiB, sender, extra, args.verify_sink, source_file))
        proc.start()
        sender.close()
        workers.append((proc, receiver))
        print(f"worker {worker_id} started (pid {proc.pid})", file=sys.stderr, flush=True)
    status = 0
    try:
        for worker_id, (proc, receiver) in enumerate(workers):
            while not receiver.poll(0.2):
                if stopping or not proc.is_alive():
                    raise RuntimeError(f"worker {worker_id} did not start")
            kind, value = receiver.recv()
            if kind != "ready":
                raise RuntimeError(f"worker {worker_id}: {value}")
        print(READY_LINE.format(port=port), flush=True)
        while not stopping and all(proc.is_alive() for proc, _ in workers):
            time.sleep(0.2)
        if not stopping:
            status = 1
            print("bare server: a worker died", file=sys.stderr, flush=True)
    except RuntimeError as exc:
        print(f"bare server: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        for proc, _ in workers:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        for proc, _ in workers:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    return status


if __name__ == "__main__":
    sys.exit(main())
