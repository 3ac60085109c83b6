"""The tus 1.0.0 rules as pure functions: headers in, values or a typed error out.

Why apart from node.http.tus: tus headers are small grammars (`Upload-Metadata` is a list of
`key base64` pairs, `Upload-Checksum` is `algorithm base64`, offsets and lengths are bare
non-negative integers) where servers go wrong on the edge cases: a duplicate key, a value that
is not base64, a sign or blank in a number, an unknown algorithm. Here each is one function
with no sockets, no files and no clock, tested directly and with Hypothesis; the handlers only
wire them to requests. Every refusal is an `InvalidArgument` (400, API.md "HTTP").

Also here, as data: what the node announces (version, extensions, checksum algorithms) and how
a contract error reads in tus terms where that differs from the rest of the HTTP face.

Reference: https://tus.io/protocols/resumable-upload (core, creation, creation-with-upload,
termination, expiration, checksum).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from node import names
from node.checksums import crc32
from node.errors import InvalidArgument, InvalidName, OssError

VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,expiration,checksum"
#: Digest sizes of the `Upload-Checksum` algorithms the node verifies.
CHECKSUM_SIZES = {"sha1": 20, "crc32": 4}
CHECKSUM_ALGORITHMS = ",".join(CHECKSUM_SIZES)
OFFSET_OCTET_STREAM = "application/offset+octet-stream"

#: The Upload-Metadata keys the node reads (others are accepted and ignored). `filetype` is
#: the key tus-js-client and Uppy send the MIME type under; `content_type` wins over it.
OBJECT_ID, FILENAME, CONTENT_TYPE, FILETYPE, SHA256 = (
    "object_id", "filename", "content_type", "filetype", "sha256")

#: Statuses under /v1/tus/ that differ from node.http.rules.STATUS_BY_REASON: bytes past
#: Upload-Length are "too large" to a tus client (as tusd answers), there is no Range here.
STATUS_BY_REASON = {"PAST_END": 413}
#: A session that existed and ended (aborted, expired, failed commit) while the node still
#: knows it: tus says 410 Gone. One it never issued or has forgotten stays 404.
GONE = 410

_INTEGER = re.compile(r"[0-9]{1,19}")
_KEY = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # printable ASCII but space and comma


def tus_status(err: OssError, default: int) -> int:
    """The status of `err` under /v1/tus/: the tus exceptions, else the face's `default`."""
    return STATUS_BY_REASON.get(err.reason, default)


def parse_integer(value: str | None, header: str) -> int:
    """`Upload-Offset` / `Upload-Length`: a non-negative decimal integer, nothing else."""
    if value is None:
        raise InvalidArgument(f"{header} is required", field=header)
    text = value.strip()
    if _INTEGER.fullmatch(text) is None:
        raise InvalidArgument(f"{header} must be a non-negative integer, not {value[:40]!r}",
                              field=header)
    return int(text)


def parse_metadata(header: str | None) -> dict[str, str]:
    """`Upload-Metadata`: comma-separated `key base64value` pairs (the value may be absent),
    keys unique ASCII without space or comma, values UTF-8 once decoded."""
    out: dict[str, str] = {}
    if header is None or not header.strip():
        return out
    for item in header.split(","):
        key, _, value = item.strip().partition(" ")
        value = value.strip()
        if _KEY.fullmatch(key) is None:
            raise InvalidArgument(f"Upload-Metadata has a malformed key {key[:40]!r}",
                                  field="Upload-Metadata")
        if key in out:
            raise InvalidArgument(f"Upload-Metadata names {key!r} twice", field="Upload-Metadata")
        try:
            out[key] = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):  # (ValueError: non-ASCII text; UnicodeDecodeError)
            raise InvalidArgument(f"Upload-Metadata value of {key!r} is not base64 of UTF-8",
                                  field="Upload-Metadata") from None
    return out


def encode_metadata(pairs: dict[str, str]) -> str:
    """The `Upload-Metadata` header for `pairs` (empty values are left out)."""
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items() if v)


def object_id_of(metadata: dict[str, str]) -> str:
    """The object a tus upload becomes: `object_id`, else `filename` if it is itself a valid
    object id. A file name is never rewritten into one: two names that rewrite to the same id
    would silently replace each other's object."""
    if metadata.get(OBJECT_ID):
        return metadata[OBJECT_ID]
    try:
        return names.validate_object_id(metadata.get(FILENAME, ""))
    except InvalidName:
        pass
    raise InvalidName("Upload-Metadata must carry object_id (base64), or a filename that is "
                      "itself a valid object id (A-Z a-z 0-9 . _ -, not starting with '.')",
                      field="object_id")


@dataclass(frozen=True, slots=True)
class Checksum:
    algorithm: str
    digest: bytes

    def matches(self, data) -> bool:
        """Does `data` (the whole PATCH body) have this digest?"""
        if self.algorithm == "sha1":
            return hashlib.sha1(data).digest() == self.digest
        return crc32(data).to_bytes(4, "big") == self.digest


def parse_checksum(header: str | None) -> Checksum | None:
    """`Upload-Checksum: <algorithm> <base64 digest>`; None without the header. The crc32
    digest is the 4-byte big-endian value of zlib's CRC-32."""
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_SIZES:
        raise InvalidArgument(f"Upload-Checksum algorithm {algorithm[:20]!r} is not supported; "
                              f"this node verifies {CHECKSUM_ALGORITHMS}", field="Upload-Checksum")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        digest = b""
    if len(digest) != CHECKSUM_SIZES[algorithm]:
        raise InvalidArgument(f"Upload-Checksum must be base64 of the {CHECKSUM_SIZES[algorithm]}"
                              f"-byte {algorithm} digest", field="Upload-Checksum")
    return Checksum(algorithm, digest)
