"""A hand codec for the two hot messages, and request decoders that never raise.

Why: a 1 MiB UploadChunk parsed by protobuf is copied into the message and copied again when
`.data` is read; a DownloadChunk is copied into the message and again when serialised. Per
chunk that is a few hundred microseconds of memory traffic on the hot path. Here an
UploadChunk is decoded into a small object whose `data` is a memoryview into the bytes gRPC
handed us (no copy), and a DownloadChunk is encoded as header + data in one join (one copy).

The wire format is protobuf's (proto3): a key varint (field number << 3 | wire type) then the
value; scalars may repeat (the last wins), unknown fields are skipped, and strings must be
UTF-8. tests/test_wire.py checks both directions against the generated code with Hypothesis.

`safe()` wraps any decoder so that bytes a client sent that do not decode become a
`Malformed` value instead of an exception: gRPC would answer INTERNAL for an exception in a
deserializer, and the contract keeps INTERNAL for our own bugs; the servicer answers
INVALID_ARGUMENT instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MASK64 = (1 << 64) - 1


class WireError(ValueError):
    """The bytes are not a valid encoding of the message."""


@dataclass(slots=True)
class Malformed:
    """Stands in for a request that could not be decoded."""

    reason: str


@dataclass(slots=True)
class UploadChunkView:
    upload_id: str = ""
    offset: int = 0
    data: memoryview | bytes = b""
    crc32: int | None = None
    sha256: str = ""
    crc32c: int | None = None


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    """(value, next position) of the varint at `pos`; WireError if truncated or overlong."""
    result = shift = 0
    while True:
        if pos >= end or shift >= 70:
            raise WireError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _MASK64, pos
        shift += 7


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(view: memoryview) -> str:
    try:
        return str(view, "utf-8")
    except UnicodeDecodeError as exc:
        raise WireError("string field is not UTF-8") from exc


def _skip(buf, wire_type: int, pos: int, end: int) -> int:
    if wire_type == _VARINT:
        return read_varint(buf, pos, end)[1]
    if wire_type == _I64:
        pos += 8
    elif wire_type == _I32:
        pos += 4
    elif wire_type == _LEN:
        length, pos = read_varint(buf, pos, end)
        pos += length
    else:
        raise WireError(f"unsupported wire type {wire_type}")
    if pos > end:
        raise WireError("truncated field")
    return pos


def decode_upload_chunk(message: bytes) -> UploadChunkView:
    view = memoryview(message)
    chunk = UploadChunkView()
    pos, end = 0, len(view)
    while pos < end:
        key, pos = read_varint(view, pos, end)
        field, wire_type = key >> 3, key & 7
        if field == 0 or key > 0xFFFFFFFF:
            raise WireError("field number out of range")
        if field in (1, 3, 5) and wire_type == _LEN:
            length, pos = read_varint(view, pos, end)
            if pos + length > end:
                raise WireError("truncated length-delimited field")
            value = view[pos:pos + length]
            pos += length
            if field == 3:
                chunk.data = value
            elif field == 1:
                chunk.upload_id = _text(value)
            else:
                chunk.sha256 = _text(value)
        elif field in (2, 4, 6) and wire_type == _VARINT:
            value, pos = read_varint(view, pos, end)
            if field == 2:
                chunk.offset = _int64(value)
            elif field == 4:
                chunk.crc32 = value & 0xFFFFFFFF
            else:
                chunk.crc32c = value & 0xFFFFFFFF
        elif field in (1, 2, 3, 4, 5, 6):
            raise WireError(f"field {field} has wire type {wire_type}")
        else:
            pos = _skip(view, wire_type, pos, end)
    return chunk


def varint(value: int) -> bytes:
    """Protobuf base-128 varint; a negative int64 takes ten bytes (two's complement)."""
    out = bytearray()
    _put_varint(out, value)
    return bytes(out)


def _put_varint(out: bytearray, value: int) -> None:
    value &= _MASK64
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def encode_download_chunk(offset: int, data, crc32: int, object_info: bytes = b"") -> bytes:
    """DownloadChunk{offset=1, data=2, crc32=3, object=4} as one bytes object."""
    header = bytearray()
    if offset:
        header.append(1 << 3 | _VARINT)
        _put_varint(header, offset)
    if crc32:
        header.append(3 << 3 | _VARINT)
        _put_varint(header, crc32)
    if object_info:
        header.append(4 << 3 | _LEN)
        _put_varint(header, len(object_info))
        header += object_info
    if len(data):
        header.append(2 << 3 | _LEN)
        _put_varint(header, len(data))
        return b"".join((header, data))
    return bytes(header)


def safe(decoder: Callable[[bytes], object]) -> Callable[[bytes], object]:
    """A decoder that returns Malformed instead of raising."""

    def decode(message: bytes) -> object:
        try:
            return decoder(message)
        except Exception as exc:  # DecodeError, WireError, anything a hostile message provokes
            return Malformed(f"{type(exc).__name__}: {exc}")

    decode.__name__ = f"safe_{getattr(decoder, '__name__', 'decode')}"
    return decode
