"""GET and HEAD /v1/objects/{object_id}: a committed version, whole or one range, by sendfile.

The version is opened once (`Store.open_download`: the row, then its file by name) and the
response is served from that descriptor: an overwrite or a delete during the response does not
change a byte of it, as with gRPC downloads. The body goes out with `loop.sendfile`, which on
the face's selector loop is `os.sendfile(2)`: no byte passes through Python. With a byte rate
limit the body is sent in slices, each paced like a gRPC chunk.

Headers (API.md, "HTTP"): Content-Length, Content-Type, Content-Disposition (RFC 6266), a
strong ETag (the generation), Last-Modified, Accept-Ranges, Repr-Digest (RFC 9530),
X-Mini-OSS-Generation. Conditions in RFC 9110's order (node.http.rules.precondition), then
one range (206, or 416 with `bytes */SIZE`; If-Range compared strongly).
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from node.auth import Role
from node.http import rules

#: With a byte rate limit, the body goes out in slices of this size, each paced.
PACED_SLICE = 1024 * 1024


def add_routes(app: web.Application, face) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await serve_object(face, request)

    app.router.add_get("/v1/objects/{object_id}", handle, allow_head=True)


async def serve_object(face, request: web.Request) -> web.StreamResponse:
    object_id = request.match_info["object_id"]
    face.authorize(request, Role.READ, object_id)
    face.admit(request)
    pin = request.rel_url.query.get("generation", "")
    with face.stream(request):
        reader = await face.run(face.store.open_download, object_id, 0, None, 0, pin)
        try:
            return await _answer(face, request, reader)
        finally:
            await face.run(reader.close)


async def _answer(face, request: web.Request, reader) -> web.StreamResponse:
    obj = reader.object
    size = obj.size
    validators = rules.Validators(etag=rules.etag_of(obj.generation),
                                  last_modified_s=obj.created_at_ms // 1000)
    headers = {
        "ETag": validators.etag,
        "Last-Modified": rules.http_date(obj.created_at_ms),
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-cache" if face.table is not None else "no-cache",
        "X-Mini-OSS-Generation": obj.generation,
    }
    verdict = rules.precondition(request.method, request.headers, validators)
    if verdict == 304:
        return web.Response(status=304, headers=headers)
    if verdict == 412:
        return web.Response(status=412, headers=headers)
    headers.update({
        "Content-Type": obj.content_type or "application/octet-stream",
        "Content-Disposition": rules.content_disposition(obj.file_name or obj.object_id),
        "Repr-Digest": rules.repr_digest(obj.sha256),
    })
    start, end, status = 0, size, 200
    if rules.if_range_holds(request.headers.get("If-Range"), validators):
        try:
            asked = rules.parse_range(request.headers.get("Range"), size)
        except rules.Unsatisfiable:
            headers["Content-Range"] = f"bytes */{size}"
            del headers["Content-Disposition"], headers["Content-Type"]
            return web.Response(status=416, headers=headers)
        if asked is not None:
            start, end = asked
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = end - start
    await response.prepare(request)
    if request.method == "HEAD" or end == start:
        await response.write_eof()
        return response
    await _send_body(face, request, reader.fd, start, end - start)
    await response.write_eof()
    return response


async def _send_body(face, request: web.Request, fd: int, offset: int, count: int) -> None:
    """`count` bytes of the open version from `offset`, by sendfile (paced if rate-limited)."""
    loop = asyncio.get_running_loop()
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("the client went away")
    with open(os.dup(fd), "rb") as file:
        paced = face.limiter is not None and face.limiter.byte_rate > 0
        step = PACED_SLICE if paced else count
        sent = 0
        try:
            while sent < count:
                n = min(step, count - sent)
                if paced:
                    await face.limiter.pace(face.client(request), n)
                # No silent copying: without TLS this is os.sendfile or an error. TLS must
                # encrypt in user space, so only there may asyncio read and write instead.
                await loop.sendfile(transport, file, offset + sent, n,
                                    fallback=transport.get_extra_info("sslcontext") is not None)
                sent += n
        finally:
            face.count_bytes("http_sent_bytes", sent)
