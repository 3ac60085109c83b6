"""Signed download URLs: HMAC-SHA256 over what a URL may do, with a key only nodes know.

Why: a browser, a phone or a CDN fetches an attachment with a plain URL and no header. The
node hands out such a URL (the SignUrl RPC, to a token that may read the object) that works
until it expires and for nothing else: the signature covers the method, the object id, the
expiry and, if pinned, the generation. Any change to them, or a URL past its expiry, is 403.

The key is 32 random bytes in `DATA_DIR/url-signing.key` (mode 0600, made on first start), or
the file `--url-signing-key-file` names: every node of a cluster must have the same one. It
never leaves the node. Comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import urllib.parse

KEY_FILE = "url-signing.key"
KEY_BYTES = 32
#: The longest a signed URL may live (API.md): leaked URLs must not be forever.
MAX_EXPIRES_SECONDS = 7 * 24 * 3600
DEFAULT_EXPIRES_SECONDS = 3600


class KeyFileError(ValueError):
    """The signing key file cannot be used (missing, short, readable by others...)."""


def load_or_create_key(data_dir: str, key_file: str = "") -> bytes:
    """The signing key: `key_file` if given (it must exist), else DATA_DIR/url-signing.key,
    created with mode 0600 by whichever process comes first."""
    path = key_file or os.path.join(data_dir, KEY_FILE)
    if not key_file:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(KEY_BYTES) + "\n")
                f.flush()
                os.fsync(f.fileno())
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the URL signing key {path!r}: {exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = text.encode()
    if len(key) < 16:
        raise KeyFileError(f"the URL signing key in {path!r} is shorter than 16 bytes")
    return key


def canonical(method: str, object_id: str, expires: int, generation: str) -> bytes:
    """What a signature covers. HEAD is signed as GET: a URL that may fetch may also ask."""
    method = "GET" if method.upper() == "HEAD" else method.upper()
    return "\n".join(["mini-oss-url-v1", method, object_id, str(expires), generation]).encode()


def signature(key: bytes, method: str, object_id: str, expires: int, generation: str = "") -> str:
    digest = hmac.new(key, canonical(method, object_id, expires, generation), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


def query(key: bytes, object_id: str, expires: int, generation: str = "") -> str:
    """The query string of a signed GET URL."""
    fields = {"expires": str(expires)}
    if generation:
        fields["generation"] = generation
    fields["signature"] = signature(key, "GET", object_id, expires, generation)
    return urllib.parse.urlencode(fields)


def check(key: bytes, method: str, object_id: str, params, now_s: float) -> str | None:
    """Why the signed request is refused (None: it is good). `params`: its query fields."""
    given = params.get("signature", "")
    expires_text = params.get("expires", "")
    if not expires_text.isdigit():
        return "a signed URL needs expires= (unix seconds)"
    expires = int(expires_text)
    generation = params.get("generation", "")
    expected = signature(key, method, object_id, expires, generation)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return "the URL's signature does not match"
    if expires < now_s:
        return "the signed URL has expired"
    return None
