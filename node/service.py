"""The gRPC servicer: parses requests, runs the node logic in the worker's pool, maps errors.

It never opens a file and never decides a rule: `node.store` does. Every handler runs inside
`_guard`, the single place where an `OssError` becomes a wire status (via `node.status`) and
anything else becomes a logged INTERNAL. Blocking work goes to the thread pool, so the event
loop keeps receiving other streams while one chunk is hashed and written.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable, TypeVar

import grpc

from node import __version__
from node.catalog import ObjectRecord, SessionRecord
from node.config import split_host_port
from node.errors import (Draining, GenerationMismatch, IdleTimeout, InvalidArgument, OssError,
                         TooManyOpenFiles)
from node.http import signing
from node.limits import StreamPlaces, out_of_files
from node.metrics import NullSlot
from node.pb import oss_pb2, oss_pb2_grpc
from node.puts import put_object
from node.scope import token_prefix
from node.status import to_status
from node.store import NewSession, Store
from node.streams import UploadStream
from node.wire import Malformed, UploadChunkView, decode_upload_chunk, encode_download_chunk, safe

log = logging.getLogger("mini_oss.service")
T = TypeVar("T")
CHECKSUMS = ("crc32", "crc32c", "sha256")


def object_info(obj: ObjectRecord) -> oss_pb2.ObjectInfo:
    return oss_pb2.ObjectInfo(
        object_id=obj.object_id, file_name=obj.file_name, size=obj.size, sha256=obj.sha256,
        content_type=obj.content_type, metadata=obj.metadata, generation=obj.generation,
        created_at_unix_ms=obj.created_at_ms)


def upload_session(rec: SessionRecord, slices: list[SessionRecord] = ()) -> oss_pb2.UploadSession:
    return oss_pb2.UploadSession(
        upload_id=rec.upload_id, object_id=rec.object_id, file_name=rec.file_name,
        file_size=rec.file_size, chunk_size=rec.chunk_size, uploaded_offset=rec.uploaded_offset,
        sha256=rec.sha256, state=int(rec.state), expires_at_unix_ms=rec.expires_at_ms,
        slices=[upload_session(s) for s in slices], parent_upload_id=rec.parent_id,
        slice_offset=rec.slice_offset)


def client_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's host, for per-client limits ("ipv4:127.0.0.1:5555" -> "ipv4:127.0.0.1")."""
    peer = context.peer() or ""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class NoLimits:
    """The limiter when rate limits are off: admits every call, paces nothing."""

    def admit(self, client: str) -> None:
        return None

    async def pace(self, client: str, nbytes: int) -> None:
        return None


class ObjectStorageServicer(oss_pb2_grpc.ObjectStorageServicer):
    def __init__(self, store: Store, pool: ThreadPoolExecutor, *,
                 put_pool: ThreadPoolExecutor | None = None, workers: int = 1,
                 worker_id: int = 0, metrics=None, limiter=None) -> None:
        self.store = store
        self.pool = pool
        #: One-call puts run here (config.put_threads says why), the rest in `pool`.
        self.put_pool = put_pool or pool
        self.workers = workers
        self.worker_id = worker_id
        self.draining = False
        #: This worker's metrics slot; written only from the event-loop thread.
        self.metrics = metrics if metrics is not None else NullSlot()
        #: Per-client rate limits: `admit(client)` raises RateLimited for a call over the
        #: request rate; `await pace(client, n)` holds a stream back to the byte rate.
        self.limiter = limiter if limiter is not None else NoLimits()
        self.active_streams = 0
        #: Open Upload and Download streams per client address, in this worker (the cap is
        #: `max_streams_per_client`); a client with none has no entry.
        self.client_streams = StreamPlaces(store.settings.max_streams_per_client,
                                           "Upload/Download streams")
        #: The URL signing key (node.http.signing), read on first use.
        self.signing_key: bytes | None = None
        self._fd_warned_at = -1e9
        self._fd_failures = 0
        #: Checkpoints that cancelled streams queued; drain waits for them.
        self.cleanups: set[asyncio.Future] = set()

    def _stream_started(self) -> None:
        self.active_streams += 1
        self.metrics.set("active_streams", self.active_streams)

    def _stream_ended(self) -> None:
        self.active_streams -= 1
        self.metrics.set("active_streams", self.active_streams)

    # -- plumbing -----------------------------------------------------------------------------

    def _run(self, fn: Callable[..., T], *args,
             pool: ThreadPoolExecutor | None = None) -> asyncio.Future[T]:
        """Run the blocking `fn(*args)` in the pool (the I/O pool unless told): a future to
        await, or to keep and await later (the pipelined upload and download loops do; no task
        is needed around it)."""
        return asyncio.get_running_loop().run_in_executor(pool or self.pool, fn, *args)

    def _admit(self, context: grpc.aio.ServicerContext) -> None:
        """Refuse a new call while draining or over the client's request rate."""
        if self.draining:
            raise Draining("the node is shutting down")
        self.limiter.admit(client_of(context))

    async def _guard(self, context: grpc.aio.ServicerContext, body: Callable[[], Awaitable[T]],
                     request: object = None, *, admit: bool = True) -> T:
        """Run `body` and answer its errors. `admit=False`: the body calls `_admit` itself
        (Upload does, once it knows the session whose offset a refusal must carry)."""
        try:
            if admit:
                self._admit(context)
            if isinstance(request, Malformed):
                raise InvalidArgument(f"the request could not be decoded ({request.reason})")
            return await body()
        except OssError as err:
            self.metrics.error(err.code)
            await context.abort_with_status(to_status(err))
        except asyncio.CancelledError:
            self.metrics.error("CANCELLED")
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            typed = self._typed(exc)
            if typed is not None:
                self.metrics.error(typed.code)
                await context.abort_with_status(to_status(typed))
            log.exception("internal error in %s", getattr(body, "__qualname__", "handler"))
            self.metrics.error("INTERNAL")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (a bug): see the node's log")
        raise AssertionError("unreachable")

    def _typed(self, exc: BaseException) -> OssError | None:
        """The contract error behind an untyped failure that is no bug: the worker out of file
        descriptors (EMFILE/ENFILE, wherever it surfaced) is a load peak, retryable."""
        if isinstance(exc, OssError):
            return exc
        if out_of_files(exc):
            self._fd_failures += 1
            now = time.monotonic()
            if now - self._fd_warned_at >= 10.0:  # one line per 10 s, not one per call
                log.warning("out of file descriptors (%d calls refused since the last warning): "
                            "%s", self._fd_failures, exc)
                self._fd_warned_at, self._fd_failures = now, 0
            return TooManyOpenFiles("the node has no file descriptors free for now")
        return None

    # -- sessions -----------------------------------------------------------------------------

    async def CreateUploadSession(self, request, context):
        async def body():
            req = NewSession(
                object_id=request.object_id, file_name=request.file_name, file_size=request.file_size,
                chunk_size=request.chunk_size, sha256=request.sha256, content_type=request.content_type,
                metadata=dict(request.metadata), if_absent=request.if_absent,
                if_generation_match=request.if_generation_match, client=client_of(context),
                slices=request.slices)
            rec = await self._run(self.store.create_session, req)
            self.metrics.add("sessions_created")
            return await self._session_message(rec)
        return await self._guard(context, body, request)

    async def _session_message(self, rec: SessionRecord) -> oss_pb2.UploadSession:
        """The session as the contract shows it; a sliced one with its slices (read in the
        pool: a plain session, most of them, needs no second trip there)."""
        slices = await self._run(self.store.slices_of, rec) if rec.slices else []
        return upload_session(rec, slices)

    async def GetUploadSession(self, request, context):
        async def body():
            rec = await self._run(self.store.get_session, request.upload_id, token_prefix())
            return await self._session_message(rec)
        return await self._guard(context, body, request)

    async def AbortUploadSession(self, request, context):
        async def body():
            await self._run(self.store.abort_session, request.upload_id, token_prefix())
            return oss_pb2.AbortUploadSessionResponse()
        return await self._guard(context, body, request)

    async def ListUploadSessions(self, request, context):
        async def body():
            rows, token = await self._run(self.store.list_sessions, request.object_id_prefix,
                                          request.page_size, request.page_token)
            return oss_pb2.ListUploadSessionsResponse(
                sessions=[upload_session(r) for r in rows], next_page_token=token)
        return await self._guard(context, body, request)

    # -- upload -------------------------------------------------------------------------------

    async def _next_chunk(self, context) -> oss_pb2.UploadChunk | None:
        try:
            async with asyncio.timeout(self.store.settings.stream_idle_timeout):
                msg = await context.read()  # (a timeout scope, not wait_for: no task per message)
        except TimeoutError:
            raise IdleTimeout("the stream sent nothing for the idle timeout") from None
        if msg is grpc.aio.EOF:
            return None
        if isinstance(msg, Malformed):
            raise InvalidArgument(f"an upload message could not be decoded ({msg.reason})")
        return msg

    async def Upload(self, request_iterator, context):
        upload_id = ""

        async def body():
            nonlocal upload_id
            # The first message names the session, so that a refusal (draining, rate limit)
            # can carry its durable offset: read it, then admit the call (charged either way).
            try:
                first = await self._next_chunk(context)
            except OssError:
                self._admit(context)
                raise
            if first is not None and first.upload_id:
                upload_id = first.upload_id
            self._admit(context)
            if first is None:
                raise InvalidArgument("the upload stream carried no message")
            if not first.upload_id:
                raise InvalidArgument("the first message must carry upload_id")
            with self.client_streams.hold(client_of(context)):
                stream: UploadStream = await self._run(self.store.open_upload, upload_id,
                                                       token_prefix())
                self._stream_started()
                try:
                    return await self._pump(context, stream, first)
                finally:
                    self._stream_ended()

        async def body_with_offset():
            # API.md: every failed Upload names the durable resume point in its metadata.
            try:
                return await body()
            except Exception as exc:
                err = self._typed(exc)
                if err is None:
                    raise
                if "uploaded_offset" not in err.metadata:
                    err.with_metadata(uploaded_offset=await self._durable_offset(upload_id))
                if err is exc:
                    raise
                raise err from exc
        return await self._guard(context, body_with_offset, admit=False)

    async def _durable_offset(self, upload_id: str) -> int:
        """The session's durable offset for an error's metadata; 0 when no session is known,
        or when it cannot be read for lack of file descriptors (a safe place to resume from:
        chunks below the real offset are duplicates, accepted and ignored)."""
        if not upload_id:
            return 0
        try:
            return await self._run(self.store.durable_offset, upload_id)
        except Exception as exc:
            if not out_of_files(exc):
                raise
            return 0

    async def _pump(self, context, stream: UploadStream, first: UploadChunkView) -> oss_pb2.UploadResponse:
        """Receive chunk N+1 while chunk N is verified, written and hashed in the pool.

        Chunks of one stream are still handled strictly in order: the next write is submitted
        only after the previous one finished, so the hash and the offsets stay sequential.
        """
        msg: UploadChunkView | None = first
        writing: asyncio.Future | None = None
        client = client_of(context)
        try:
            while msg is not None:
                if msg.upload_id and msg.upload_id != stream.upload_id:
                    raise InvalidArgument("upload_id differs from the stream's first message")
                await self.limiter.pace(client, len(msg.data))
                if writing is not None:
                    await writing
                writing = self._write(stream, msg)
                if self.active_streams > self.store.settings.io_threads:
                    # Every pool thread has other streams' chunks to write: receiving this
                    # stream's next chunk early gains nothing and holds a chunk per stream.
                    await writing
                    writing = None
                msg = await self._next_chunk(context)
            if writing is not None:
                await writing
            rec, obj = await self._run(stream.finish)
        except OssError as err:
            self._forget(writing)
            await self._cleanup(stream)
            raise err.with_metadata(uploaded_offset=stream.durable_offset)
        except BaseException:
            self._forget(writing)
            await self._cleanup(stream)
            raise
        response = oss_pb2.UploadResponse(session=upload_session(rec))
        if obj is not None:
            response.object.CopyFrom(object_info(obj))
        return response

    def _write(self, stream: UploadStream, msg: UploadChunkView) -> asyncio.Future:
        started = time.monotonic()
        size = len(msg.data)
        future = self._run(stream.accept, msg.offset, msg.data, msg.crc32, msg.crc32c, msg.sha256)

        def done(f: asyncio.Future) -> None:  # runs on the loop thread: the slot's one writer
            self.metrics.add("received_bytes", size)
            self.metrics.add("chunks_received")
            if not f.cancelled() and f.exception() is None:
                self.metrics.observe("chunk_write_seconds", time.monotonic() - started)
        future.add_done_callback(done)
        return future

    @staticmethod
    def _forget(future: asyncio.Future | None) -> None:
        """A write still in flight when the stream fails: its outcome no longer matters (the
        stream's lock orders the cleanup after it), but it must not be logged as unretrieved."""
        if future is not None:
            future.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _cleanup(self, stream: UploadStream) -> None:
        """Checkpoint and release, even when the call is being cancelled."""
        future = self._run(stream.close)
        self.cleanups.add(future)
        future.add_done_callback(self.cleanups.discard)
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            pass  # the pool still runs close(); the stream's lock orders it after any write

    async def wait_for_cleanups(self, timeout: float) -> None:
        """Let every queued checkpoint finish (used by drain, before the pool stops)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.cleanups or self.active_streams:
            if asyncio.get_running_loop().time() > deadline:
                log.error("%d stream cleanups still running at shutdown", len(self.cleanups))
                return
            if self.cleanups:
                await asyncio.wait(set(self.cleanups), timeout=0.1)
            else:
                await asyncio.sleep(0.01)

    # -- one-call put -------------------------------------------------------------------------

    async def PutObject(self, request, context):
        async def body():
            client = client_of(context)
            size = len(request.data)
            with self.client_streams.hold(client):  # it holds its bytes as a stream would
                self.metrics.add("received_bytes", size)
                self.metrics.add("chunks_received")
                await self.limiter.pace(client, size)
                fields = NewSession(
                    object_id=request.object_id, file_name=request.file_name, file_size=size,
                    sha256=request.sha256, content_type=request.content_type,
                    metadata=dict(request.metadata), if_absent=request.if_absent,
                    if_generation_match=request.if_generation_match, client=client)
                crc32 = request.crc32 if request.HasField("crc32") else None
                crc32c = request.crc32c if request.HasField("crc32c") else None
                self._stream_started()
                try:
                    obj = await self._run(put_object, self.store, fields, request.data, crc32,
                                          crc32c, pool=self.put_pool)
                finally:
                    self._stream_ended()
            return oss_pb2.PutObjectResponse(object=object_info(obj))
        return await self._guard(context, body, request)

    # -- objects ------------------------------------------------------------------------------

    async def Download(self, request, context):
        async def body():
            started = time.monotonic()
            end = request.end_offset if request.HasField("end_offset") else None
            with self.client_streams.hold(client_of(context)):
                reader = await self._run(self.store.open_download, request.object_id,
                                         request.start_offset, end, request.chunk_size,
                                         request.if_generation_match)
                self._stream_started()
                try:
                    await self._send(context, reader, started)
                finally:
                    self._stream_ended()
                    reader.close()
        await self._guard(context, body, request)

    async def _write_chunk(self, context, message: bytes) -> None:
        """Send one download message, or end the stream with IDLE_TIMEOUT when the client
        takes nothing for `download_stall_timeout` (flow control holds the write back): a
        stalled client must not pin the open file and the chunk buffers for ever."""
        stall = self.store.settings.download_stall_timeout
        try:
            async with asyncio.timeout(stall):
                await context.write(message)
        except TimeoutError:
            raise IdleTimeout(f"the client took no data for {stall:g} s") from None

    async def _send(self, context, reader, started: float) -> None:
        # Headers on their own first: a status sent while a write is held back by flow control
        # must not need them again (gRPC refuses a second pending send of initial metadata).
        await context.send_initial_metadata(())
        info = object_info(reader.object).SerializeToString()
        if reader.start == reader.end:
            await self._write_chunk(context, encode_download_chunk(reader.start, b"", 0, info))
            self.metrics.observe("download_first_byte_seconds", time.monotonic() - started)
            return
        offset = reader.start
        client = client_of(context)
        pending = self._read_chunk(reader, offset, info)
        try:
            while offset < reader.end:
                message, length = await pending
                following = offset + length
                # Read the next chunk while this one is on the wire.
                pending = self._read_chunk(reader, following) if following < reader.end else None
                await self.limiter.pace(client, length)
                await self._write_chunk(context, message)
                if offset == reader.start:
                    self.metrics.observe("download_first_byte_seconds", time.monotonic() - started)
                self.metrics.add("sent_bytes", length)
                self.metrics.add("chunks_sent")
                offset = following
        finally:
            if pending is not None:
                await asyncio.gather(pending, return_exceptions=True)

    def _read_chunk(self, reader, offset: int, info: bytes = b"") -> asyncio.Future:
        """The message of the chunk at `offset`, as a future. A cached chunk is read right here,
        on the event loop: a memory copy and a CRC-32, cheaper than the two thread hand-offs of
        a trip to the pool (warm downloads: 0.59-0.73 CPU-s per GB against 0.83-0.90, and 25%
        more MB/s); a chunk that must come from the disk goes to the pool as before. (Pages
        evicted between the check and the read make one chunk a disk read on the loop: rare, and
        bounded by `max_chunk_size`.)"""
        if not reader.cached(offset):
            return self._run(functools.partial(reader.message, offset, info, cached=False))
        future = asyncio.get_running_loop().create_future()
        try:
            future.set_result(reader.message(offset, info, cached=True))
        except Exception as exc:  # the pool's future would carry it the same way
            future.set_exception(exc)
        return future

    async def StatObject(self, request, context):
        async def body():
            return object_info(await self._run(self.store.stat, request.object_id))
        return await self._guard(context, body, request)

    async def ListObjects(self, request, context):
        async def body():
            rows, token = await self._run(self.store.list_objects, request.prefix,
                                          request.page_size, request.page_token)
            return oss_pb2.ListObjectsResponse(objects=[object_info(o) for o in rows],
                                               next_page_token=token)
        return await self._guard(context, body, request)

    async def DeleteObject(self, request, context):
        async def body():
            await self._run(self.store.delete, request.object_id, request.if_generation_match)
            return oss_pb2.DeleteObjectResponse()
        return await self._guard(context, body, request)

    async def GetNodeInfo(self, request, context):
        s = self.store.settings

        async def body():
            return oss_pb2.NodeInfo(
                version=__version__, default_chunk_size=s.default_chunk_size,
                max_chunk_size=s.max_chunk_size, max_object_size=s.max_object_size,
                session_ttl_ms=int(s.session_ttl * 1000), checksums=list(CHECKSUMS),
                workers=self.workers, worker_id=self.worker_id,
                stream_idle_timeout_ms=int(s.stream_idle_timeout * 1000),
                max_sessions=s.max_sessions, max_sessions_per_client=s.max_sessions_per_client,
                disk_reserve_bytes=s.disk_reserve, rate_limit_requests=s.rate_limit_requests,
                rate_limit_bytes=s.rate_limit_bytes, auth_required=bool(s.auth_token_file),
                max_streams_per_client=s.max_streams_per_client,
                max_streams_per_connection=s.max_streams_per_connection,
                download_stall_timeout_ms=int(s.download_stall_timeout * 1000),
                node_name=s.node_name, catalog_backend=self.store.backend.name,
                http_port=http_port(s))
        return await self._guard(context, body, request)

    async def SignDownloadUrl(self, request, context):
        async def body():
            expires_in = request.expires_in_seconds or signing.DEFAULT_EXPIRES_SECONDS
            if not 0 < expires_in <= signing.MAX_EXPIRES_SECONDS:
                raise InvalidArgument(f"expires_in_seconds must be 1..{signing.MAX_EXPIRES_SECONDS}"
                                      " (7 days)", field="expires_in_seconds")
            obj = await self._run(self.store.stat, request.object_id)  # it exists, and may be read
            if request.generation and request.generation != obj.generation:
                raise GenerationMismatch("the object's current generation does not match",
                                         current_generation=obj.generation)
            if self.signing_key is None:
                self.signing_key = await self._run(
                    signing.load_or_create_key, self.store.settings.data_dir,
                    self.store.settings.url_signing_key_file)
            expires = int(time.time()) + expires_in
            path = (f"/v1/objects/{request.object_id}?"
                    f"{signing.query(self.signing_key, request.object_id, expires, request.generation)}")
            return oss_pb2.SignedDownloadUrl(path=path, http_port=http_port(self.store.settings),
                                             expires_at_unix_ms=expires * 1000,
                                             generation=request.generation)
        return await self._guard(context, body, request)


def http_port(settings) -> int:
    """The HTTP face's port (the supervisor has put the bound one into the settings)."""
    return split_host_port(settings.http_listen)[1] if settings.http_listen else 0


def generic_handler(servicer: ObjectStorageServicer) -> grpc.GenericRpcHandler:
    """The service's method table, built from the proto descriptor.

    Instead of the generated `add_ObjectStorageServicer_to_server` we register the methods
    ourselves so that: Upload messages are decoded by the hand codec (no protobuf object per
    chunk); Download messages arrive already encoded; and every request decoder is wrapped by
    `wire.safe`, so a message that does not decode is INVALID_ARGUMENT, not gRPC's INTERNAL.
    """
    service = oss_pb2.DESCRIPTOR.services_by_name["ObjectStorage"]
    handlers = {}
    for method in service.methods:
        request_type = getattr(oss_pb2, method.input_type.name)
        response_type = getattr(oss_pb2, method.output_type.name)
        behaviour = getattr(servicer, method.name)
        if method.name == "Upload":
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                behaviour, request_deserializer=safe(decode_upload_chunk),
                response_serializer=response_type.SerializeToString)
        elif method.name == "Download":
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behaviour, request_deserializer=safe(request_type.FromString),
                response_serializer=bytes)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=safe(request_type.FromString),
                response_serializer=response_type.SerializeToString)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
