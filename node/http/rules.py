"""The HTTP face's rules as pure functions: ranges, validators, conditional requests, headers,
and how a contract error reads in HTTP. No sockets, no files, no clock (times are passed in).

Why apart: RFC 9110's precedence of conditions, its range forms and RFC 6266's file names are
where HTTP servers usually go wrong; here each is a function tested directly (and with
Hypothesis), and the handlers only wire them to requests.

References: RFC 9110 (semantics: §13.1 conditions, §13.2.2 their order, §14 ranges, §8.8.3
ETag comparison), RFC 6266 + RFC 8187 (Content-Disposition with `filename*`), RFC 9530
(`Repr-Digest`).
"""

from __future__ import annotations

import base64
import email.utils
import re
import urllib.parse
from dataclasses import dataclass

from node.errors import OssError

#: The HTTP status of each contract reason (API.md, "HTTP"); a code's default covers the rest.
STATUS_BY_REASON = {
    "INVALID_NAME": 400, "CHUNK_TOO_LARGE": 413, "TOO_LARGE": 413, "DISK_FULL": 507,
    "OBJECT_EXISTS": 412, "GENERATION_MISMATCH": 412, "SESSION_COMMITTED": 409,
    "OFFSET_MISMATCH": 409, "SESSION_BUSY": 423, "IDLE_TIMEOUT": 408, "PAST_END": 416,
    "INVALID_RANGE": 416, "CHECKSUM_MISMATCH": 460, "SHA256_MISMATCH": 460,
    "SESSION_NOT_FOUND": 404, "OBJECT_NOT_FOUND": 404, "DRAINING": 503,
    "CATALOG_UNAVAILABLE": 503, "RATE_LIMITED": 429, "TOO_MANY_SESSIONS": 429,
    "TOO_MANY_STREAMS": 429, "TOO_MANY_OPEN_FILES": 503, "MISSING_TOKEN": 401,
    "INVALID_TOKEN": 401, "FORBIDDEN": 403, "SLICES_INCOMPLETE": 409,
}
STATUS_BY_CODE = {
    "INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "FAILED_PRECONDITION": 412,
    "OUT_OF_RANGE": 416, "DATA_LOSS": 460, "ABORTED": 409, "RESOURCE_EXHAUSTED": 429,
    "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504, "INTERNAL": 500,
}


def status_of(err: OssError) -> int:
    return STATUS_BY_REASON.get(err.reason) or STATUS_BY_CODE.get(err.code, 500)


def error_body(err: OssError) -> dict:
    """The JSON body of an error: the same code and reason as the gRPC ErrorInfo."""
    body = {"code": err.code, "reason": err.reason, "message": err.message}
    if err.metadata:
        body["metadata"] = dict(err.metadata)
    return body


# --- validators ----------------------------------------------------------------------------

def etag_of(generation: str) -> str:
    """A strong entity tag: the generation names exactly one version's bytes."""
    return f'"{generation}"'


def http_date(unix_ms: int) -> str:
    return email.utils.formatdate(unix_ms / 1000, usegmt=True)


def parse_http_date(text: str) -> float | None:
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return moment.timestamp() if moment is not None else None


_ETAG = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


def parse_etags(header: str) -> list[tuple[bool, str]] | None:
    """An If-Match / If-None-Match list as (weak, opaque-tag) pairs; None for `*`; [] when the
    value is malformed (it then matches nothing)."""
    if header.strip() == "*":
        return None
    tags, pos, text = [], 0, header.strip()
    while pos < len(text):
        match = _ETAG.match(text, pos)
        if match is None:
            return []
        tags.append((bool(match.group(1)), match.group(2)))
        pos = match.end()
    return tags


def _matches(header: str, etag: str, *, weak: bool) -> bool:
    tags = parse_etags(header)
    if tags is None:
        return True
    return any(tag == etag and (weak or not is_weak) for is_weak, tag in tags)


@dataclass(frozen=True)
class Validators:
    etag: str             # strong
    last_modified_s: int  # whole seconds, as Last-Modified carries them


def precondition(method: str, headers, v: Validators) -> int:
    """RFC 9110 §13.2.2 for a GET/HEAD of an existing object: 0 (go on), 304 or 412."""
    if_match = headers.get("If-Match")
    if if_match is not None:
        if not _matches(if_match, v.etag, weak=False):
            return 412
    else:
        since = headers.get("If-Unmodified-Since")
        stamp = parse_http_date(since) if since is not None else None
        if stamp is not None and v.last_modified_s > stamp:
            return 412
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        if _matches(if_none_match, v.etag, weak=True):
            return 304 if method in ("GET", "HEAD") else 412
    elif method in ("GET", "HEAD"):
        since = headers.get("If-Modified-Since")
        stamp = parse_http_date(since) if since is not None else None
        if stamp is not None and v.last_modified_s <= stamp:
            return 304
    return 0


def if_range_holds(header: str | None, v: Validators) -> bool:
    """Does an If-Range let the Range apply? Only a strong match of the entity tag; no If-Range:
    yes. A date never does: two versions committed within one second share their Last-Modified,
    so it is a weak validator (RFC 9110 §8.8.2.2) and §13.1.5 forbids the range on it — it
    could splice two versions into one file."""
    if header is None:
        return True
    return header.strip() == v.etag


# --- ranges --------------------------------------------------------------------------------

class Unsatisfiable(ValueError):
    """A Range none of whose parts overlaps the object: 416 with `Content-Range: bytes */SIZE`."""


_RANGE_SPEC = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range [start, end) a `Range` header asks for, or None to send the whole
    object: no header, another unit, a malformed value (RFC 9110 lets a server ignore it), or
    several ranges (answered with the whole object, which the RFC allows). Raises
    Unsatisfiable when the single range lies wholly past the end (or is `-0`)."""
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _RANGE_SPEC.fullmatch(spec)
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # a suffix: the last N bytes
        length = int(last)
        if length == 0:
            raise Unsatisfiable("a zero-length suffix range")
        return max(0, size - length), size
    start = int(first)
    end = size if last == "" else int(last) + 1
    if last != "" and end <= start:
        return None  # last < first: not a valid range-spec, ignored
    if start >= size:
        raise Unsatisfiable(f"range starts at {start}, the object has {size} bytes")
    return start, min(end, size)


# --- other headers -------------------------------------------------------------------------

def content_disposition(file_name: str, disposition: str = "attachment") -> str:
    """RFC 6266: a quoted ASCII fallback for old clients and `filename*` (RFC 8187, UTF-8,
    percent-encoded) with the exact name; control characters and quotes never reach a header."""
    clean = "".join(c for c in file_name if c.isprintable()) or "download"
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in clean)
    encoded = urllib.parse.quote(clean, safe="!#$&+-.^_`|~")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def repr_digest(sha256_hex: str) -> str:
    """RFC 9530 `Repr-Digest` of the whole object (the same for a range of it)."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode() + ":"
