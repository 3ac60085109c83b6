"""The verifying sink: the bare server's Upload and PutObject, doing to every byte what the node
must do.

Why: the bare sink (bare_server) never decodes an UploadChunk, so node/bare mixes two costs:
the work any server that verifies uploads has to do (decode, CRC-32 of each chunk, SHA-256 of
the object) and the node's own (claims, pwrite, checkpoints, the catalog). This sink does the
first and none of the second, so "upload >= 0.80 x verifying sink" measures only the latter.
`python -m tools.bench.bare_server --verify-sink` runs it; everything but Upload, PutObject and
CreateUploadSession is the bare server's.

How, mirroring node.service (`_pump`) and node.streams (`UploadStream.accept`) with the node's
own functions, so each piece costs what it costs there:

* each raw message is decoded by the node's decoder (node.wire.decode_upload_chunk: `data` is
  a memoryview into the received bytes, no copy);
* one call per chunk in a ThreadPoolExecutor of the node's `io_threads` (default 8) per worker
  checks the chunk's CRC-32 (node.checksums.crc32), its offset (node.session_rules.plan_chunk:
  a duplicate is trimmed, a gap is OFFSET_MISMATCH) and the expected SHA-256 a chunk may carry,
  then feeds the new bytes to the stream's hashlib.sha256 (both release the GIL);
* the overlap is the node's: chunk k+1 is received while chunk k is in the pool, and chunk k+1
  is submitted only once chunk k is done, so the hash sees the bytes in order;
* at the end the digest is compared with the expected one (given at CreateUploadSession,
  carried here in the upload_id, or on any chunk) and returned in ObjectInfo.sha256.

PutObject (a whole small object in one message) is verified as a one-chunk Upload: one pool
call checks the data's CRC-32 and hashes it, and the digest is compared with the request's
`sha256`.

A failure ends the call with the node's status (node.status.to_status): a wrong CRC-32 is
DATA_LOSS / CHECKSUM_MISMATCH, a wrong SHA-256 DATA_LOSS / SHA256_MISMATCH.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from concurrent.futures import ThreadPoolExecutor

from node.checksums import crc32
from node.config import Settings
from node.errors import ChecksumMismatch, InvalidArgument, OssError, Sha256Mismatch
from node.session_rules import is_complete, merge_expected_sha256, plan_chunk
from node.wire import UploadChunkView, decode_upload_chunk
from tools.bench.bare_server import MAX_CHUNK, BareServicer, upload_size


class VerifiedUpload:
    """One Upload stream's state: the offset reached, the running hash, the expected hash.

    `accept` runs in a pool thread, one call at a time per stream (the pump awaits each)."""

    def __init__(self, upload_id: str, size: int, expected_sha256: str) -> None:
        self.upload_id = upload_id
        self.size = size
        self.offset = 0
        self.expected_sha256 = merge_expected_sha256("", expected_sha256)
        self.hasher = hashlib.sha256()

    @classmethod
    def of_session(cls, upload_id: str) -> "VerifiedUpload":
        """The stream of a session this sink handed out (its upload_id carries size and hash)."""
        return cls(upload_id, upload_size(upload_id), declared_sha256(upload_id))

    def accept(self, chunk: UploadChunkView) -> None:
        """Verify one chunk and hash its new bytes (node.streams.UploadStream.accept, minus
        the claim, the write and the checkpoints)."""
        data = chunk.data
        if chunk.crc32 is not None and crc32(data) != chunk.crc32:
            raise ChecksumMismatch("crc32 of the chunk does not match", offset=chunk.offset)
        self.expected_sha256 = merge_expected_sha256(self.expected_sha256, chunk.sha256)
        plan = plan_chunk(uploaded_offset=self.offset, file_size=self.size, offset=chunk.offset,
                          length=len(data), max_chunk_size=MAX_CHUNK)
        if plan.length:
            self.hasher.update(data[plan.skip:plan.skip + plan.length])
            self.offset = plan.new_offset

    def digest(self) -> str:
        """The object's SHA-256, checked against the expected one."""
        digest = self.hasher.hexdigest()
        if self.expected_sha256 and digest != self.expected_sha256:
            raise Sha256Mismatch("the object's SHA-256 does not match the expected hash",
                                 expected=self.expected_sha256, actual=digest)
        return digest


def declared_sha256(upload_id: str) -> str:
    """The SHA-256 given at CreateUploadSession: `bare-SIZE-TOKEN-SHA256` (the sink keeps no
    sessions, and the Upload may land on another worker than the create)."""
    parts = upload_id.split("-")
    return parts[3] if len(parts) > 3 else ""


class VerifyingServicer(BareServicer):
    """The bare servicer whose Upload verifies and hashes; see the module's docstring."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The node's pool: one per worker, `io_threads` threads (node.server).
        self.pool = ThreadPoolExecutor(Settings().io_threads, thread_name_prefix="sink-io")

    async def create_upload_session(self, request, context):
        upload_id = f"bare-{request.file_size}-{secrets.token_hex(8)}"
        if request.sha256:
            upload_id += f"-{request.sha256}"
        return self.pb.UploadSession(upload_id=upload_id, object_id=request.object_id,
                                     file_name=request.file_name, file_size=request.file_size,
                                     chunk_size=request.chunk_size or self.chunk_size,
                                     sha256=request.sha256, state=self.pb.UploadSession.ACTIVE)

    async def upload(self, request_iterator, context):
        from node.status import to_status

        try:
            stream = await self._pump(request_iterator)
            if stream is None:
                raise InvalidArgument("the upload stream carried no message")
            if not is_complete(stream.offset, stream.size):
                return self.incomplete(stream)
            return self.committed(stream.upload_id, stream.size, stream.digest())
        except OssError as err:
            await context.abort_with_status(to_status(err))

    async def put_object(self, request, context):
        """The whole object verified in one pool call, as a one-message Upload is."""
        from node.status import to_status

        self.received += len(request.data)
        try:
            loop = asyncio.get_running_loop()
            digest = await loop.run_in_executor(self.pool, verify_put, request)
            return self.put_committed(request, len(request.data), digest)
        except OssError as err:
            await context.abort_with_status(to_status(err))

    def incomplete(self, stream: VerifiedUpload):
        """The stream ended short: the session stays ACTIVE at its offset (no object)."""
        session = self.pb.UploadSession(upload_id=stream.upload_id, file_size=stream.size,
                                        uploaded_offset=stream.offset,
                                        state=self.pb.UploadSession.ACTIVE)
        return self.pb.UploadResponse(session=session)

    async def _pump(self, request_iterator) -> VerifiedUpload | None:
        """Receive chunk k+1 while chunk k is verified and hashed in the pool (node.service
        `_pump`); the next chunk is submitted only after the previous one is done."""
        loop = asyncio.get_running_loop()
        stream: VerifiedUpload | None = None
        hashing: asyncio.Future | None = None
        try:
            async for raw in request_iterator:
                self.received += len(raw)
                chunk = decode(raw)
                if stream is None:
                    if not chunk.upload_id:
                        raise InvalidArgument("the first message must carry upload_id")
                    stream = VerifiedUpload.of_session(chunk.upload_id)
                if hashing is not None:
                    await hashing
                hashing = loop.run_in_executor(self.pool, stream.accept, chunk)
            if hashing is not None:
                await hashing
        except BaseException:
            if hashing is not None:  # still in flight: its outcome no longer matters
                hashing.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise
        return stream


def verify_put(request) -> str:
    """A PutObjectRequest's data checked as a one-chunk upload's (its CRC-32, then its SHA-256
    against the one it carries); returns the SHA-256."""
    upload = VerifiedUpload("", len(request.data), request.sha256)
    crc = request.crc32 if request.HasField("crc32") else None
    upload.accept(UploadChunkView(offset=0, data=request.data, crc32=crc))
    return upload.digest()


def decode(raw: bytes) -> UploadChunkView:
    """An UploadChunk, or INVALID_ARGUMENT for bytes that are not one (as the node answers)."""
    try:
        return decode_upload_chunk(raw)
    except ValueError as exc:
        raise InvalidArgument(f"an upload message could not be decoded ({exc})") from None
