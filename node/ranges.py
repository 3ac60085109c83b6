"""Download ranges and listing pages: the arithmetic and the tokens, with no I/O.

Why: a byte range and a page token both arrive from clients as free-form numbers and text; a
wrong one must become `InvalidRange` or `InvalidPageToken`, never a crash or a page of someone
else's listing. Kept pure, they are property-tested for exactly that.

How: `resolve_range` applies API.md's "Download rules" in their written order and returns a
half-open `(start, end)`. `page_size` applies the listing limits. A page token is
`base64url(version | HMAC-SHA256 | body)` without padding, where `body` is the JSON list of the
last key returned, and the MAC covers the version, the listing ("objects" or "sessions"), the
prefix and the body. So the node recognises its own tokens without storing them, a token is
useless on another listing, another prefix or another node secret, and anything else (bad
base64, a cut or altered token, a non-string) is `InvalidPageToken`. The secret must be shared
by every worker (and survive restarts if tokens should) - the caller decides where it lives.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from typing import Callable, Sequence, TypeVar

from node.errors import InvalidArgument, InvalidPageToken, InvalidRange

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_TOKEN_VERSION = b"\x01"
_MAC_BYTES = hashlib.sha256().digest_size
#: Longer text is refused before any decoding (real tokens are a few hundred characters).
MAX_PAGE_TOKEN_CHARS = 4096
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")


# --- byte ranges ---------------------------------------------------------------------------


def resolve_range(size: int, start_offset: int, end_offset: int | None) -> tuple[int, int]:
    """The half-open byte range [start, end) a download asks for, per API.md "Download rules".

    A negative start counts back from the end (clamped at 0); an end past the size (or unset)
    is the size. Then a start past the size, a negative end or an end before the start is
    InvalidRange. An empty range (start == end) is allowed.
    """
    start = max(size + start_offset, 0) if start_offset < 0 else start_offset
    end = size if end_offset is None or end_offset > size else end_offset
    if start > size:
        raise InvalidRange(f"start_offset {start_offset} is past the end of the object "
                           f"({size} bytes)", size=size, start_offset=start_offset)
    if end < 0:
        raise InvalidRange(f"end_offset {end_offset} is negative", size=size,
                           end_offset=end_offset)
    if end < start:
        raise InvalidRange(f"end_offset {end_offset} is before start_offset {start}", size=size,
                           start_offset=start, end_offset=end_offset)
    return start, end


# --- listing pages -------------------------------------------------------------------------


def page_size(requested: int) -> int:
    """Entries per page: 0 means 100, more than 1000 is cut to 1000, negative is InvalidArgument."""
    if requested < 0:
        raise InvalidArgument(f"page_size {requested} is negative", field="page_size")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def cut_page(rows: Sequence[T], limit: int, max_bytes: int, size_of: Callable[[T], int]) -> int:
    """How many of `rows` go into a page of at most `limit` rows and `max_bytes` bytes (by
    `size_of`); at least one, so that a listing always moves forward."""
    total = 0
    for count, row in enumerate(rows[:limit]):
        total += size_of(row)
        if total > max_bytes and count > 0:
            return count
    return min(len(rows), limit)


def new_page_token_secret() -> bytes:
    """A fresh random secret for `encode_page_token` (the caller stores and shares it)."""
    return secrets.token_bytes(32)


def encode_page_token(secret: bytes, listing: str, prefix: str, last_key: tuple[str, ...]) -> str:
    """A URL-safe token that resumes `listing` under `prefix` after `last_key`."""
    _check_secret(secret)
    if not all(isinstance(part, str) for part in last_key):
        raise TypeError("last_key must be a tuple of strings")
    body = json.dumps(list(last_key), ensure_ascii=True, separators=(",", ":")).encode("ascii")
    raw = _TOKEN_VERSION + _mac(secret, listing, prefix, body) + body
    return _b64encode(raw)


def decode_page_token(secret: bytes, listing: str, prefix: str, token: str) -> tuple[str, ...]:
    """The last key a token from `encode_page_token` carries; "" (no token) is ().

    Anything the node did not issue for this listing and prefix is InvalidPageToken.
    """
    _check_secret(secret)
    if isinstance(token, str) and token == "":
        return ()
    refused = InvalidPageToken("page_token was not issued by this node for this listing")
    if not isinstance(token, str) or len(token) > MAX_PAGE_TOKEN_CHARS:
        raise refused
    if _TOKEN_CHARS.fullmatch(token) is None:
        raise refused
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        raise refused from None
    # Only the canonical spelling is ours (base64 decoding ignores some trailing bits).
    if _b64encode(raw) != token or len(raw) < 1 + _MAC_BYTES or raw[:1] != _TOKEN_VERSION:
        raise refused
    mac, body = raw[1:1 + _MAC_BYTES], raw[1 + _MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, listing, prefix, body)):
        raise refused
    try:
        key = json.loads(body.decode("ascii"))
    except ValueError:  # cannot happen for a token with a valid MAC; refuse all the same
        raise refused from None
    if not isinstance(key, list) or not all(isinstance(part, str) for part in key):
        raise refused
    return tuple(key)


def _mac(secret: bytes, listing: str, prefix: str, body: bytes) -> bytes:
    # JSON with ensure_ascii has no raw newline, so header "\n" body is unambiguous.
    header = json.dumps([listing, prefix], ensure_ascii=True, separators=(",", ":"))
    message = _TOKEN_VERSION + header.encode("ascii") + b"\n" + body
    return hmac.new(secret, message, hashlib.sha256).digest()


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError("the page token secret must be bytes")
