"""One client process: one grpc.aio event loop driving its share of the streams.

Why this shape: one Python process cannot drive 100 fast streams (the GIL and gRPC's own
per-message work), so the runner starts several of these with multiprocessing (spawn) and each
drives `streams` over its own `channels`. Every channel is its own TCP connection
(`grpc.use_local_subchannel_pool` plus a distinct channel argument), because the node spreads
connections, not streams, over its workers; streams go round-robin over the channels.

Life of a client process:
1. open its channels and call GetNodeInfo on each (records which worker took the connection);
2. prepare its content (pool, per-object SHA-256 with --sha256 --count); tell the runner "ready";
3. wait for "go" (all processes start the timed phase together), run the streams;
4. send back per-object latencies, bytes, errors by status code and its own CPU seconds.

Hot path: an upload chunk is `codec.upload_prefix(...) + prebuilt body` sent with an identity
serializer; a download chunk is decoded by `codec.decode_download_chunk` without copying the
data, then (unless --no-verify) checked: offsets in order, CRC-32 per chunk, SHA-256 at the end.

An object of at most one chunk (small mode's) is by default one PutObject call,
`codec.put_prefix(...) + its body`: it is how a client stores a small object at the node's
cheapest, so that is what small mode measures; `--small-calls session` sends the session and
one-message Upload it took before PutObject existed, to compare the two.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import resource
import time
import traceback
from dataclasses import dataclass, field

from node.checksums import crc32
from tools.bench import codec
from tools.bench.cli import BenchConfig
from tools.bench.workload import ContentPool, ObjectSpec, object_tag, upload_object_id

SERVICE = "/oss.v1.ObjectStorage/"


@dataclass
class ProcessResult:
    """What one client process measured; pickled back to the runner."""

    process: int
    pid: int
    start: float = 0.0            # wall clock (time.time) when the timed phase began here
    end: float = 0.0
    bytes: int = 0
    objects: int = 0
    latencies: list[float] = field(default_factory=list)     # seconds per completed object
    first_byte: list[float] = field(default_factory=list)    # download: request -> first chunk
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0
    rss_peak_bytes: int = 0                                  # this process's peak RSS (getrusage)
    channels: list[dict] = field(default_factory=list)       # {"channel", "worker_id", "streams"}
    committed: list[str] = field(default_factory=list)       # upload: object ids to delete later
    failure: str = ""                                        # the process itself failed


def channel_options(cfg: BenchConfig, channel_id: int) -> list[tuple[str, object]]:
    """Options of one client channel.

    A verifying download client consumes more slowly than a server can send; with gRPC's BDP
    probing its receive windows then grow until ~2 GB per client process sit in gRPC's buffers
    (measured here), and on these VMs faulting in that fresh memory costs more CPU than the
    verification itself. So verifying downloads turn BDP probing off (memory stays flat and it
    runs ~40% faster); anything else keeps gRPC's defaults. --channel-arg overrides either.
    """
    limit = cfg.chunk_size + 2 * 1024 * 1024  # >= chunk + 1 MiB, whatever the chunk size
    defaults = [("grpc.http2.bdp_probe", 0)] if cfg.mode == "download" and cfg.verify else []
    given = {key for key, _ in cfg.channel_args}
    return [*(o for o in defaults if o[0] not in given), 
        ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024)),
        ("grpc.max_receive_message_length", max(limit, 64 * 1024 * 1024)),
        ("grpc.use_local_subchannel_pool", 1),        # no connection shared between channels
        ("mini_oss.bench_channel", channel_id),       # and distinct args, to be sure
        *cfg.channel_args,
    ]


class Channel:
    """One aio channel, its stubs with identity (de)serializers, and which worker it reached."""

    def __init__(self, cfg: BenchConfig, channel_id: int) -> None:
        import grpc
        from node.pb import oss_pb2

        self.id = channel_id
        self.pb = oss_pb2
        # Several nodes ("a:1,b:2"): channels are dealt over them round robin.
        addrs = cfg.addr.split(",")
        self.addr = addrs[channel_id % len(addrs)]
        self.channel = grpc.aio.insecure_channel(self.addr,
                                                 options=channel_options(cfg, channel_id))
        ident = None  # grpc passes bytes through when no (de)serializer is given
        self.create = self.channel.unary_unary(SERVICE + "CreateUploadSession",
                                               request_serializer=oss_pb2.CreateUploadSessionRequest.SerializeToString,
                                               response_deserializer=oss_pb2.UploadSession.FromString)
        self.put = self.channel.unary_unary(SERVICE + "PutObject", request_serializer=ident,
                                            response_deserializer=oss_pb2.PutObjectResponse.FromString)
        self.upload = self.channel.stream_unary(SERVICE + "Upload", request_serializer=ident,
                                                response_deserializer=oss_pb2.UploadResponse.FromString)
        self.download = self.channel.unary_stream(SERVICE + "Download",
                                                  request_serializer=oss_pb2.DownloadRequest.SerializeToString,
                                                  response_deserializer=ident)
        self.node_info = self.channel.unary_unary(SERVICE + "GetNodeInfo",
                                                  request_serializer=oss_pb2.GetNodeInfoRequest.SerializeToString,
                                                  response_deserializer=oss_pb2.NodeInfo.FromString)
        self.worker_id: int | None = None
        self.streams = 0

    async def connect(self) -> None:
        info = await self.node_info(self.pb.GetNodeInfoRequest(), wait_for_ready=True, timeout=30)
        self.worker_id = info.worker_id


def balanced(channels: list) -> list:
    """The channels in the order streams are dealt to them, so that every worker reached gets
    the same share of streams (±1), not every connection: SO_REUSEPORT spreads connections
    unevenly when they are few (16 connections have put 25 and 75 of 100 streams on two
    workers), and a worker's share moves its throughput run to run. Workers take turns; each
    worker's connections take turns among themselves."""
    by_worker: dict = {}
    for ch in channels:
        by_worker.setdefault((ch.addr, ch.worker_id), []).append(ch)
    groups = [by_worker[key] for key in sorted(by_worker, key=str)]
    if not groups:
        return list(channels)
    cycles = max(len(group) for group in groups) * len(groups)
    return [groups[n % len(groups)][(n // len(groups)) % len(groups[n % len(groups)])]
            for n in range(cycles)]


class StreamError(Exception):
    """A client-side check failed (not a gRPC status): counted under `label`."""

    def __init__(self, label: str, message: str) -> None:
        super().__init__(message)
        self.label = label


class ClientProcess:
    def __init__(self, cfg: BenchConfig, process: int, streams: list[int], channel_ids: list[int],
                 download_ids: list[str], download_size: int, download_sha256: dict[str, str]) -> None:
        self.cfg = cfg
        self.process = process
        self.stream_ids = streams
        self.channels = [Channel(cfg, c) for c in channel_ids]
        self.download_ids = download_ids
        self.download_size = download_size
        self.download_sha256 = download_sha256
        self.result = ProcessResult(process=process, pid=os.getpid())
        self.errors: collections.Counter[str] = collections.Counter()
        self.pool: ContentPool | None = None
        self.sha256: dict[tuple[int, int], str] = {}
        self.deadline: float | None = None

    # -- set-up -------------------------------------------------------------------------------

    async def prepare(self) -> None:
        await asyncio.gather(*(ch.connect() for ch in self.channels))
        if self.cfg.mode == "upload":
            self.pool = ContentPool(self.cfg.chunk_size, self.cfg.file_size, self.cfg.pool_chunks,
                                    seed=f"{self.cfg.run_id}:{self.process}")
            per_stream = self.cfg.objects_per_stream
            if self.cfg.send_sha256 and self.cfg.duration is None and per_stream:
                for stream in self.stream_ids:
                    for n in range(per_stream):
                        self.sha256[(stream, n)] = self.pool.sha256(self._spec(stream, n))

    def _spec(self, stream: int, n: int):
        assert self.pool is not None
        tag = object_tag(self.cfg.run_id, self.process, stream, n)
        return self.pool.spec(upload_object_id(self.cfg.run_id, stream, n),
                              number=stream * 1_000_000 + n, tag=tag)

    # -- the timed phase ----------------------------------------------------------------------

    async def run(self) -> ProcessResult:
        import psutil

        me = psutil.Process()
        cpu0 = me.cpu_times()
        self.result.start = time.time()
        if self.cfg.duration is not None:
            self.deadline = time.monotonic() + self.cfg.duration
        tasks = []
        order = balanced(self.channels) if self.cfg.balance else self.channels
        for i, stream in enumerate(self.stream_ids):
            ch = order[i % len(order)]
            ch.streams += 1
            body = self._upload_stream if self.cfg.mode == "upload" else self._download_stream
            tasks.append(asyncio.create_task(body(stream, ch)))
        await asyncio.gather(*tasks)
        self.result.end = time.time()
        cpu1 = me.cpu_times()
        self.result.cpu_seconds = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        self.result.rss_peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.result.errors = dict(self.errors)
        self.result.channels = [{"channel": ch.id, "worker_id": ch.worker_id, "streams": ch.streams}
                                for ch in self.channels]
        return self.result

    def _more(self, n: int) -> bool:
        per_stream = self.cfg.objects_per_stream
        if per_stream is not None and n >= per_stream:
            return False
        return self.deadline is None or time.monotonic() < self.deadline

    def _fail(self, exc: BaseException) -> None:
        import grpc

        if isinstance(exc, grpc.aio.AioRpcError):
            label = exc.code().name
            text = f"{label}: {exc.details()}"
        elif isinstance(exc, StreamError):
            label, text = exc.label, f"{exc.label}: {exc}"
        else:
            label, text = type(exc).__name__, f"{type(exc).__name__}: {exc}"
        self.errors[label] += 1
        if len(self.result.error_samples) < 5:
            self.result.error_samples.append(text)

    async def _upload_stream(self, stream: int, ch: Channel) -> None:
        cfg, pool = self.cfg, self.pool
        assert pool is not None
        upload_object = self._put_object if cfg.one_call_put else self._session_upload
        n = 0
        while self._more(n):
            spec = self._spec(stream, n)
            sha = self.sha256.get((stream, n)) or (pool.sha256(spec) if cfg.send_sha256 else "")
            started = time.perf_counter()
            try:
                await upload_object(ch, spec, sha)
            except Exception as exc:  # noqa: BLE001 - count every failure by its kind
                self._fail(exc)
            else:
                self.result.latencies.append(time.perf_counter() - started)
                self.result.bytes += spec.size
                self.result.objects += 1
                if not cfg.keep:
                    self.result.committed.append(spec.object_id)
            n += 1

    async def _put_object(self, ch: Channel, spec: ObjectSpec, sha: str) -> None:
        """The whole object in one PutObject call (its data, CRC-32 and SHA-256 if any)."""
        assert self.pool is not None
        request = (codec.put_prefix(spec.object_id, "bench.bin", spec.size)
                   + self.pool.whole_body(spec) + codec.sha256_field(sha))
        response = await ch.put(request)
        if response.object.size != spec.size:
            raise StreamError("NOT_COMMITTED", f"{spec.object_id}: the response carries no "
                              f"object of {spec.size} bytes")

    async def _session_upload(self, ch: Channel, spec: ObjectSpec, sha: str) -> None:
        """CreateUploadSession, then every chunk on one Upload stream."""
        pool = self.pool
        assert pool is not None
        session = await ch.create(ch.pb.CreateUploadSessionRequest(
            object_id=spec.object_id, file_name="bench.bin", file_size=spec.size,
            chunk_size=self.cfg.chunk_size, sha256=sha))
        call = ch.upload()
        try:
            upload_id = session.upload_id
            for offset, length, body in pool.chunks(spec):
                await call.write(codec.upload_prefix(upload_id, offset, length) + body)
                upload_id = ""  # only the first message needs it
            if spec.size == 0:
                await call.write(codec.upload_prefix(upload_id, 0, 0))
            await call.done_writing()
        except Exception as exc:  # noqa: BLE001
            raise await _why_call_ended(call, exc) from None
        response = await call
        if response.object.size != spec.size:
            raise StreamError("NOT_COMMITTED", f"{spec.object_id}: the response carries no "
                              f"object of {spec.size} bytes (state {response.session.state})")

    async def _download_stream(self, stream: int, ch: Channel) -> None:
        cfg, pb = self.cfg, ch.pb
        decode, crc_of = codec.decode_download_chunk, crc32
        n = 0
        while self._more(n):
            object_id = self.download_ids[(stream + n * cfg.concurrency) % len(self.download_ids)]
            started = time.perf_counter()
            first = None
            expected = 0
            hasher = hashlib.sha256() if cfg.verify else None
            info_sha = ""
            call = None
            try:
                call = ch.download(pb.DownloadRequest(object_id=object_id, chunk_size=cfg.chunk_size))
                async for raw in call:
                    if first is None:
                        first = time.perf_counter()
                    offset, data, crc, info = decode(raw)
                    if info is not None:
                        info_sha = pb.ObjectInfo.FromString(info).sha256
                    if hasher is not None:
                        if offset != expected:
                            raise StreamError("CLIENT_OFFSET", f"chunk at {offset}, expected {expected}")
                        if crc_of(data) != crc:
                            raise StreamError("CLIENT_CRC32", f"{object_id}: CRC-32 mismatch at {offset}")
                        hasher.update(data)
                    expected += len(data)
                if expected != self.download_size:
                    raise StreamError("CLIENT_SHORT", f"{object_id}: {expected} of {self.download_size} bytes")
                if hasher is not None:
                    want = self.download_sha256.get(object_id) or info_sha
                    if hasher.hexdigest() != want:
                        raise StreamError("CLIENT_SHA256", f"{object_id}: SHA-256 mismatch")
            except Exception as exc:  # noqa: BLE001 - count every failure by its kind
                if call is not None:
                    call.cancel()
                self._fail(exc)
            else:
                done = time.perf_counter()
                self.result.latencies.append(done - started)
                self.result.first_byte.append((first or done) - started)
                self.result.bytes += expected
                self.result.objects += 1
            n += 1


async def _why_call_ended(call, exc: Exception) -> Exception:
    """A write on a call the server already ended raises something else: the call's own
    status says why (else `exc` stands)."""
    import grpc

    if isinstance(exc, grpc.aio.AioRpcError):
        return exc
    try:
        await call
    except grpc.aio.AioRpcError as rpc_error:
        return rpc_error
    except Exception:  # noqa: BLE001
        pass
    return exc


def _event_loop_factory():
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def client_main(cfg: BenchConfig, process: int, streams: list[int], channel_ids: list[int],
                download_ids: list[str], download_size: int, download_sha256: dict[str, str],
                ready, go, results) -> None:
    """Entry point of a spawned client process (see the module doc for its life)."""
    async def main() -> ProcessResult:
        client = ClientProcess(cfg, process, streams, channel_ids, download_ids, download_size,
                               download_sha256)
        try:
            await client.prepare()
        except Exception:
            ready.put((process, traceback.format_exc()))
            raise
        ready.put((process, ""))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        result = await client.run()
        for ch in client.channels:
            await ch.channel.close()
        return result

    try:
        with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
            result = runner.run(main())
    except Exception:
        result = ProcessResult(process=process, pid=os.getpid(), failure=traceback.format_exc())
    results.put(result)
