"""tus 1.0.0 uploads at /v1/tus/ on the node's own upload sessions (API.md, "HTTP").

Why tus on the same sessions: a browser or app speaks HTTP, not gRPC, and still needs an
upload that survives a lost connection. A tus upload *is* an upload session: POST creates it
with `Store.create_session` (its upload id is the last segment of the Location), PATCH drives
an `UploadStream` exactly as a gRPC Upload stream does (the same claim, writes, running hash,
checkpoints, SHA-256 check, preconditions and atomic commit), HEAD reads the durable
`uploaded_offset`, DELETE aborts. So either protocol can continue what the other began.

How a PATCH runs (`Tus._write`): look the session up under the token's prefix (`scope`, as
gRPC does: an upload id alone opens nothing), claim it (`open_upload`: SESSION_BUSY while
another stream holds it), require `Upload-Offset` to equal the claimed offset (tus has no
duplicate chunks), then read the body in pieces of at most 1 MiB (and `max_chunk_size`), each
paced and counted, and `accept()` them in the worker's pool, receiving piece N+1 while piece N
is written. The piece that completes the object is held back until the body's end is seen, so
a body that runs past Upload-Length is refused before anything commits. `finish()` commits a
complete object, else checkpoints: the Upload-Offset answered is durable. On any error, a
client gone mid-body included, `close()` keeps what was verified and releases the claim, so the
session resumes from its durable offset.

With `Upload-Checksum` the body is held in memory (at most CHECKSUM_BODY_LIMIT) and verified
before its first byte is written: a PATCH whose checksum fails leaves nothing behind.

Every answer carries `Tus-Resumable: 1.0.0`; errors are the face's JSON, with the statuses of
node.http.rules except where tus names its own (node.http.tus_rules). The pure header rules
live in node.http.tus_rules.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError

from node.auth import Role
from node.catalog import SessionRecord
from node.errors import (ChecksumMismatch, ChunkTooLarge, IdleTimeout, InvalidArgument,
                         OffsetMismatch, OssError, PastEnd, SessionNotFound)
from node.http import rules, tus_rules
from node.http.face import error_response
from node.session_rules import State
from node.store import NewSession

#: Bytes handed to one `accept()` call (never above the node's max_chunk_size).
PIECE = 1024 * 1024
#: A PATCH with Upload-Checksum is verified before it is written, so it is held in memory:
#: at most this much (413 beyond). Clients send checksummed uploads in chunks anyway.
CHECKSUM_BODY_LIMIT = 64 * 1024 * 1024
BASE = "/v1/tus/"


class Refusal(Exception):
    """An error answered with a tus status of its own (405, 410, 412, 415), or with headers."""

    def __init__(self, status: int, err: OssError, headers: dict[str, str] | None = None) -> None:
        super().__init__(err.message)
        self.status, self.err, self.headers = status, err, headers or {}


def add_routes(app: web.Application, face) -> None:
    tus = Tus(face)
    for path in (BASE, BASE.rstrip("/")):
        app.router.add_route("*", path, tus.collection)
    app.router.add_route("*", BASE + "{upload_id}", tus.upload)


class Tus:
    def __init__(self, face) -> None:
        self.face = face
        self.store = face.store
        self.settings = face.settings

    # -- dispatch -------------------------------------------------------------------------------

    async def collection(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, {"OPTIONS": self.options, "POST": self.create})

    async def upload(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, {"OPTIONS": self.options, "HEAD": self.head,
                                            "PATCH": self.patch, "DELETE": self.terminate},
                                  request.match_info["upload_id"])

    async def _answer(self, request: web.Request, handlers, *args) -> web.StreamResponse:
        method = request.method
        if method == "POST" and "X-HTTP-Method-Override" in request.headers:
            # tus: for clients that cannot send PATCH or DELETE.
            method = request.headers["X-HTTP-Method-Override"].strip().upper()
        try:
            handler = handlers.get(method)
            if handler is None:
                raise Refusal(405, InvalidArgument(f"{method} is not a tus method here"),
                              {"Allow": ", ".join(handlers)})
            if method != "OPTIONS" and request.headers.get("Tus-Resumable") != tus_rules.VERSION:
                raise Refusal(412, InvalidArgument(
                    f"this is a tus {tus_rules.VERSION} endpoint: send Tus-Resumable: "
                    f"{tus_rules.VERSION}", field="Tus-Resumable"),
                    {"Tus-Version": tus_rules.VERSION})
            response = await handler(request, *args)
        except Refusal as refusal:
            response = self._error(refusal.err, refusal.status, refusal.headers)
        except OssError as err:
            response = self._error(err, tus_rules.tus_status(err, rules.status_of(err)))
        except ConnectionError:
            # The client went away mid-body; the session was left resumable. Answered (to
            # nobody) rather than raised: aiohttp would log a routine disconnect as an error.
            response = self._error(InvalidArgument("the connection was lost before the body "
                                                   "ended"), 400)
        response.headers["Tus-Resumable"] = tus_rules.VERSION
        return response

    @staticmethod
    def _error(err: OssError, status: int, headers: dict[str, str] | None = None) -> web.Response:
        response = error_response(err, headers)
        response.set_status(status)
        if "uploaded_offset" in err.metadata:  # where the client resumes, as on gRPC
            response.headers["Upload-Offset"] = err.metadata["uploaded_offset"]
        return response

    # -- the methods ----------------------------------------------------------------------------

    async def options(self, request: web.Request, *_) -> web.Response:
        return web.Response(status=204, headers={
            "Tus-Version": tus_rules.VERSION, "Tus-Extension": tus_rules.EXTENSIONS,
            "Tus-Max-Size": str(self.settings.max_object_size),
            "Tus-Checksum-Algorithm": tus_rules.CHECKSUM_ALGORITHMS})

    async def create(self, request: web.Request) -> web.Response:
        """POST: a new session; with a body (creation-with-upload), its first bytes too."""
        for header in ("Upload-Defer-Length", "Upload-Concat"):
            if header in request.headers:
                raise InvalidArgument(f"{header} is not supported: send Upload-Length",
                                      field=header)
        length = tus_rules.parse_integer(request.headers.get("Upload-Length"), "Upload-Length")
        metadata = tus_rules.parse_metadata(request.headers.get("Upload-Metadata"))
        object_id = tus_rules.object_id_of(metadata)
        with_body = _has_body(request)
        checksum = None
        if with_body:
            _require_offset_stream(request)
            checksum = tus_rules.parse_checksum(request.headers.get("Upload-Checksum"))
        scope = self.face.authorize(request, Role.WRITE, object_id)
        self.face.admit(request)
        rec = await self.face.run(self.store.create_session, NewSession(
            object_id=object_id, file_name=metadata.get(tus_rules.FILENAME) or object_id,
            file_size=length, sha256=metadata.get(tus_rules.SHA256, ""),
            content_type=(metadata.get(tus_rules.CONTENT_TYPE)
                          or metadata.get(tus_rules.FILETYPE, "")),
            client=self.face.client(request)))
        if self.face.events is not None:
            self.face.events.add("sessions_created")
        headers = {"Location": BASE + rec.upload_id}
        if with_body or length == 0:  # a zero-byte object is complete at once: commit it
            try:
                rec = await self._write(request, rec, scope, 0, checksum)
            except OssError as err:
                # The session exists: if it can still take bytes, the client must learn where
                # it is and resume there (tus: "accept as many bytes as possible").
                fresh = await self.face.run(self.store.get_session, rec.upload_id, scope)
                if fresh.state is not State.ACTIVE:
                    status = tus_rules.tus_status(err, rules.status_of(err))
                    raise Refusal(status, err, headers) from err
                rec = fresh
        return web.Response(status=201, headers={**headers, **_progress(rec)})

    async def head(self, request: web.Request, upload_id: str) -> web.Response:
        scope = self.face.authorize(request, Role.READ, None)
        self.face.admit(request)
        rec = _alive(await self.face.run(self.store.get_session, upload_id, scope))
        metadata = tus_rules.encode_metadata({tus_rules.OBJECT_ID: rec.object_id,
                                              tus_rules.FILENAME: rec.file_name})
        return web.Response(status=200, headers={
            **_progress(rec), "Upload-Length": str(rec.file_size), "Upload-Metadata": metadata,
            "Cache-Control": "no-store"})

    async def patch(self, request: web.Request, upload_id: str) -> web.Response:
        _require_offset_stream(request)
        offset = tus_rules.parse_integer(request.headers.get("Upload-Offset"), "Upload-Offset")
        checksum = tus_rules.parse_checksum(request.headers.get("Upload-Checksum"))
        scope = self.face.authorize(request, Role.WRITE, None)
        self.face.admit(request)
        rec = _alive(await self.face.run(self.store.get_session, upload_id, scope))
        if rec.slices:
            raise InvalidArgument("a sliced session takes its bytes through its slices (PATCH "
                                  "each slice's upload id); commit it over gRPC",
                                  field="upload_id")
        rec = await self._write(request, rec, scope, offset, checksum)
        return web.Response(status=204, headers=_progress(rec))

    async def terminate(self, request: web.Request, upload_id: str) -> web.Response:
        """DELETE: abort the session and free its bytes (an aborted one: 204 again, as the
        gRPC AbortUploadSession answers OK again, so a retried DELETE succeeds)."""
        scope = self.face.authorize(request, Role.WRITE, None)
        self.face.admit(request)
        await self.face.run(self.store.abort_session, upload_id, scope)
        return web.Response(status=204)

    # -- bytes ----------------------------------------------------------------------------------

    async def _write(self, request: web.Request, rec: SessionRecord, scope: str, offset: int,
                     checksum: tus_rules.Checksum | None) -> SessionRecord:
        """The request body at `offset` of the session; the session afterwards (its
        uploaded_offset durable). See the module doc for the order of things."""
        size = request.content_length
        if checksum is not None and size is not None and size > CHECKSUM_BODY_LIMIT:
            raise _too_big_to_verify()
        with self.face.stream(request):
            return await self._write_body(request, rec, scope, offset, checksum, size)

    async def _write_body(self, request: web.Request, rec: SessionRecord, scope: str,
                          offset: int, checksum: tus_rules.Checksum | None,
                          size: int | None) -> SessionRecord:
        try:
            stream = await self.face.run(self.store.open_upload, rec.upload_id, scope)
        except SessionNotFound as err:  # it ended since we looked
            raise Refusal(tus_rules.GONE, err) from err
        try:
            if offset != stream.offset:
                raise OffsetMismatch(f"Upload-Offset is {offset}, the upload is at "
                                     f"{stream.offset}", uploaded_offset=stream.offset)
            if size is not None and offset + size > rec.file_size:
                raise _past_end(offset, size, rec.file_size)
            pieces = self._pieces(request)
            if checksum is not None:
                pieces = await self._verified(pieces, checksum)
            await self._pump(stream, offset, pieces, rec.file_size)
            done, _ = await self.face.run(stream.finish)
            return done
        except OssError as err:
            await self._close(stream)
            raise err.with_metadata(uploaded_offset=stream.durable_offset)
        except BaseException:
            await self._close(stream)  # the client went away: keep what was verified
            raise

    async def _pieces(self, request: web.Request) -> AsyncIterator[bytearray]:
        """The body in pieces of PIECE bytes (the last may be shorter), each counted and paced
        as it comes off the wire; IDLE_TIMEOUT when the client sends nothing for the stream
        idle timeout."""
        face, idle = self.face, self.settings.stream_idle_timeout
        size = min(PIECE, self.settings.max_chunk_size)
        paced = face.limiter is not None and face.limiter.byte_rate > 0
        client = face.client(request)
        piece = bytearray()
        while True:
            try:
                async with asyncio.timeout(idle):
                    data = await request.content.read(size - len(piece))
            except TimeoutError:
                raise IdleTimeout(f"the client sent nothing for {idle:g} s") from None
            except (HttpProcessingError, ClientPayloadError) as exc:  # e.g. bad chunked framing
                raise InvalidArgument(f"the request body is malformed: {exc}") from None
            if data:
                face.count_bytes("http_received_bytes", len(data))
                if paced:
                    await face.limiter.pace(client, len(data))
                piece += data
            if piece and (len(piece) == size or not data):
                yield piece
                piece = bytearray()
            if not data:
                return

    async def _verified(self, pieces: AsyncIterator[bytearray],
                        checksum: tus_rules.Checksum) -> AsyncIterator[memoryview]:
        """The whole body, held and checked against Upload-Checksum before any of it is
        written; then the same pieces again."""
        body = bytearray()
        async for piece in pieces:
            body += piece
            if len(body) > CHECKSUM_BODY_LIMIT:
                raise _too_big_to_verify()
        if not await self.face.run(checksum.matches, body):
            raise ChecksumMismatch(f"the {checksum.algorithm} of the body does not match "
                                   "Upload-Checksum: nothing of it was kept")

        async def again() -> AsyncIterator[memoryview]:
            view, step = memoryview(body), min(PIECE, self.settings.max_chunk_size)
            for start in range(0, len(body), step):
                yield view[start:start + step]
        return again()

    async def _pump(self, stream, offset: int, pieces: AsyncIterator, file_size: int) -> None:
        """accept() each piece in the pool, receiving the next meanwhile (one write in flight,
        so the hash and offsets stay sequential). The piece that completes the object waits
        for the body's end: more bytes after it are PAST_END and nothing commits."""
        writing: asyncio.Future | None = None
        last = None
        try:
            async for piece in pieces:
                if offset + len(piece) > file_size:
                    raise _past_end(offset, len(piece), file_size)
                if writing is not None:
                    await writing
                    writing = None
                if offset + len(piece) < file_size:
                    writing = asyncio.ensure_future(
                        self.face.run(stream.accept, offset, piece, None, None, ""))
                else:
                    last = (offset, piece)
                offset += len(piece)
            if writing is not None:
                await writing
                writing = None
            if last is not None:
                await self.face.run(stream.accept, *last, None, None, "")
        finally:
            if writing is not None:  # failed meanwhile: close() is ordered after it
                writing.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _close(self, stream) -> None:
        """Checkpoint and release, even when the request is being cancelled."""
        try:
            await asyncio.shield(self.face.run(stream.close))
        except asyncio.CancelledError:
            pass  # the pool still runs close(); the stream's lock orders it after any write


def _has_body(request: web.Request) -> bool:
    return bool(request.content_length) or request.headers.get(
        "Transfer-Encoding", "").lower() == "chunked"


def _require_offset_stream(request: web.Request) -> None:
    if request.content_type != tus_rules.OFFSET_OCTET_STREAM:
        raise Refusal(415, InvalidArgument(
            f"the body must be Content-Type: {tus_rules.OFFSET_OCTET_STREAM}",
            field="Content-Type"))


def _alive(rec: SessionRecord) -> SessionRecord:
    """A session that can be shown or written: an ended one (aborted, expired, failed commit)
    is 410 Gone while the node still knows it (then 404, as an id it never issued)."""
    if rec.state is State.ABORTED:
        raise Refusal(tus_rules.GONE, SessionNotFound(
            "the upload session ended (aborted, expired, or its commit failed)",
            state=rec.state.name))
    return rec


def _progress(rec: SessionRecord) -> dict[str, str]:
    """Upload-Offset (durable), and Upload-Expires while the session can still expire."""
    headers = {"Upload-Offset": str(rec.uploaded_offset)}
    if rec.state is State.ACTIVE:
        headers["Upload-Expires"] = rules.http_date(rec.expires_at_ms)
    return headers


def _past_end(offset: int, length: int, file_size: int) -> PastEnd:
    return PastEnd(f"{length} bytes at offset {offset} run past Upload-Length {file_size}",
                   file_size=file_size, offset=offset, length=length)


def _too_big_to_verify() -> ChunkTooLarge:
    return ChunkTooLarge(f"a PATCH with Upload-Checksum carries at most {CHECKSUM_BODY_LIMIT} "
                         "bytes (it is held in memory until verified)", limit=CHECKSUM_BODY_LIMIT)
