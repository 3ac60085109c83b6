"""The load generator's side of the hot wire messages: encode UploadChunk and PutObjectRequest,
decode DownloadChunk.

Why: a client process that must drive dozens of 1 MiB streams cannot afford to build a
protobuf object per chunk (it copies the data in, then copies it again to serialise). Here an
UploadChunk is two pieces of bytes joined once per send:

    prefix = [1: upload_id] [2: offset] [3: tag + length of data]     (tiny, built per chunk)
    body   = data [4: crc32] [5: sha256]                               (prebuilt per pool chunk)

so the per-chunk cost is one allocation and one memcpy, which gRPC needs anyway (it takes one
`bytes`). A PutObjectRequest (a whole small object) is `put_prefix` ([1: object_id]
[2: file_name] [3: tag + length of data]) joined to the same body: its fields 3-5 are
UploadChunk's. Fields stay in field-number order, exactly as protobuf itself writes them. A
DownloadChunk is decoded into (offset, data as a memoryview into the received bytes, crc32,
raw ObjectInfo bytes) without copying the data.

The wire format is protobuf's proto3: a key varint (field << 3 | wire type), then a varint or a
length-delimited value. tests/bench/test_bench_codec.py checks both directions against the
generated code (`oss_pb2.UploadChunk.FromString`, `PutObjectRequest.FromString`,
`oss_pb2.DownloadChunk.SerializeToString`).
The varint primitives are the node's own (`node.wire`), so both sides share one implementation.
"""

from __future__ import annotations

from node.wire import WireError, read_varint, varint

_VARINT, _LEN = 0, 2

_KEY_UPLOAD_ID = bytes([1 << 3 | _LEN])
_KEY_OFFSET = bytes([2 << 3 | _VARINT])
_KEY_DATA = bytes([3 << 3 | _LEN])
_KEY_CRC32 = bytes([4 << 3 | _VARINT])
_KEY_SHA256 = bytes([5 << 3 | _LEN])
_KEY_OBJECT_ID, _KEY_FILE_NAME = bytes([1 << 3 | _LEN]), bytes([2 << 3 | _LEN])  # PutObjectRequest


def upload_prefix(upload_id: str, offset: int, data_length: int) -> bytes:
    """Fields 1-2 and the key and length of field 3 (the data follows it)."""
    parts = []
    if upload_id:
        raw = upload_id.encode()
        parts += [_KEY_UPLOAD_ID, varint(len(raw)), raw]
    if offset:
        parts += [_KEY_OFFSET, varint(offset)]
    parts += [_KEY_DATA, varint(data_length)]
    return b"".join(parts)


def upload_body(data: bytes, crc32: int | None, sha256: str = "") -> bytes:
    """Data, then fields 4-5: prebuild it once per pool chunk and reuse it for every object."""
    parts = [data]
    if crc32 is not None:
        parts += [_KEY_CRC32, varint(crc32)]
    return b"".join(parts) + sha256_field(sha256)


def sha256_field(sha256: str) -> bytes:
    """Field 5, the expected SHA-256 (nothing when there is none): it follows a body."""
    if not sha256:
        return b""
    raw = sha256.encode()
    return _KEY_SHA256 + varint(len(raw)) + raw


def put_prefix(object_id: str, file_name: str, data_length: int) -> bytes:
    """A PutObjectRequest's fields 1-2 and the key and length of field 3. Its fields 3-5 (data,
    crc32, sha256) are UploadChunk's, same numbers and types, so a prebuilt upload body (and
    `sha256_field`) completes it."""
    parts = []
    for key, text in ((_KEY_OBJECT_ID, object_id), (_KEY_FILE_NAME, file_name)):
        if text:
            raw = text.encode()
            parts += [key, varint(len(raw)), raw]
    parts += [_KEY_DATA, varint(data_length)]
    return b"".join(parts)


def upload_chunk(upload_id: str, offset: int, data: bytes, crc32: int | None = None,
                 sha256: str = "") -> bytes:
    """A whole UploadChunk (the slow, simple form; the driver joins prefix and body itself)."""
    return upload_prefix(upload_id, offset, len(data)) + upload_body(data, crc32, sha256)


def decode_download_chunk(message: bytes) -> tuple[int, memoryview, int, bytes | None]:
    """(offset, data, crc32, raw ObjectInfo or None) of one DownloadChunk; data is not copied."""
    view = memoryview(message)
    pos, end = 0, len(message)
    offset, crc32, data, info = 0, 0, view[0:0], None
    while pos < end:
        key, pos = read_varint(message, pos, end)
        field, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = read_varint(message, pos, end)
            if field == 1:
                offset = value - (1 << 64) if value >> 63 else value
            elif field == 3:
                crc32 = value & 0xFFFFFFFF
        elif wire_type == _LEN:
            length, pos = read_varint(message, pos, end)
            if pos + length > end:
                raise WireError("truncated length-delimited field")
            if field == 2:
                data = view[pos:pos + length]
            elif field == 4:
                info = bytes(view[pos:pos + length])
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wire_type}")
    if pos != end:
        raise WireError("truncated fixed-width field")
    return offset, data, crc32, info
