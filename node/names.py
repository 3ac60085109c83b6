"""Names: what clients may call things, and the file names the node derives from them.

Why: every name a client sends ends up in a path on disk (`parts/`, `objects/`, `index/`), so
the rules that keep the node inside its data directory and inside the file system's 255-byte
name limit live in one place, with no I/O, and are property-tested.

How: each `validate_*` function takes what arrived on the wire and either returns it unchanged
or raises the typed error API.md names (`InvalidName` for names, `InvalidArgument` for other
fields), with a message that says what is wrong. Nothing here ever raises anything else for any
input, whatever its type. Disk names are built by `part_file_name` and `object_file_name`;
when one would pass `MAX_NAME_BYTES` only its file-name part is shortened (the stem first, then
the extension) at UTF-8 character boundaries, so the object id and upload id always survive
intact and the result is always valid UTF-8. `ObjectInfo` keeps the full name; only the disk
name is short.
"""

from __future__ import annotations

import os
import re
import secrets
from typing import Mapping

from node.errors import InvalidArgument, InvalidName

#: The file system's limit for one path component, in bytes.
MAX_NAME_BYTES = 255
MAX_OBJECT_ID_CHARS = 128
MAX_FILE_NAME_BYTES = 255
MAX_CONTENT_TYPE_CHARS = 255
MAX_METADATA_BYTES = 8 * 1024
#: `new_upload_id` makes this many lowercase hex characters (96 random bits).
UPLOAD_ID_CHARS = 24

_BAD_OBJECT_ID_CHAR = re.compile(r"[^A-Za-z0-9._-]")
_UPLOAD_ID = re.compile(r"[0-9a-f]{%d}" % UPLOAD_ID_CHARS)
# What `part_file_name`/`object_file_name` accept as an upload id: wider than the issued format
# (tests and tools may use their own), but never a path separator, a dot or anything long.
_DISK_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PART_MARK = ".part."
_PUT_MARK = ".put."  # the same length as _PART_MARK: one budget fits both


# --- validation of what clients send -------------------------------------------------------


def validate_object_id(value: str) -> str:
    """Return `value` if it is a valid object id (API.md "Names"), else raise InvalidName."""
    if not isinstance(value, str):
        raise InvalidName(f"object_id must be a string, not {type(value).__name__}", field="object_id")
    if not value:
        raise InvalidName("object_id is empty", field="object_id")
    if len(value) > MAX_OBJECT_ID_CHARS:
        raise InvalidName(f"object_id is {len(value)} characters long; at most "
                          f"{MAX_OBJECT_ID_CHARS} are allowed", field="object_id")
    bad = _BAD_OBJECT_ID_CHAR.search(value)
    if bad is not None:
        raise InvalidName(f"object_id contains {bad.group()!r} at position {bad.start()}; only "
                          "A-Z, a-z, 0-9, '.', '_' and '-' are allowed", field="object_id")
    if value in (".", ".."):
        raise InvalidName(f"object_id must not be {value!r}", field="object_id")
    if value.startswith("."):
        raise InvalidName("object_id must not start with '.'", field="object_id")
    return value


def is_object_id_prefix(value: str) -> bool:
    """True if some valid object id starts with `value` (listings of any other prefix are empty)."""
    return (isinstance(value, str) and len(value) <= MAX_OBJECT_ID_CHARS
            and _BAD_OBJECT_ID_CHAR.search(value) is None)


def validate_file_name(value: str) -> str:
    """Return `value` if it is a valid file name (API.md "Names"), else raise InvalidName."""
    if not isinstance(value, str):
        raise InvalidName(f"file_name must be a string, not {type(value).__name__}", field="file_name")
    size = _utf8_len(value)
    if size is None:
        raise InvalidName("file_name is not valid UTF-8", field="file_name")
    if size == 0:
        raise InvalidName("file_name is empty", field="file_name")
    if size > MAX_FILE_NAME_BYTES:
        raise InvalidName(f"file_name is {size} bytes of UTF-8; at most {MAX_FILE_NAME_BYTES} "
                          "are allowed", field="file_name")
    if "/" in value:
        raise InvalidName("file_name must not contain '/'", field="file_name")
    if "\x00" in value:
        raise InvalidName("file_name must not contain NUL", field="file_name")
    if value in (".", ".."):
        raise InvalidName(f"file_name must not be {value!r}", field="file_name")
    return value


def validate_content_type(value: str) -> str:
    """Return `value` if it has at most 255 characters, else raise InvalidArgument."""
    if not isinstance(value, str):
        raise InvalidArgument(f"content_type must be a string, not {type(value).__name__}",
                              field="content_type")
    if len(value) > MAX_CONTENT_TYPE_CHARS:
        raise InvalidArgument(f"content_type is {len(value)} characters long; at most "
                              f"{MAX_CONTENT_TYPE_CHARS} are allowed", field="content_type")
    return value


def validate_metadata(m: Mapping[str, str]) -> dict[str, str]:
    """A plain copy of `m` if its keys and values total <= 8 KiB of UTF-8, else InvalidArgument."""
    try:
        items = list(m.items())
    except Exception:  # not a mapping at all (no .items, or one that fails)
        raise InvalidArgument("metadata must be a map of strings to strings",
                              field="metadata") from None
    out: dict[str, str] = {}
    total = 0
    for key, val in items:
        if not isinstance(key, str) or not isinstance(val, str):
            raise InvalidArgument("metadata keys and values must be strings", field="metadata")
        key_len, val_len = _utf8_len(key), _utf8_len(val)
        if key_len is None or val_len is None:
            raise InvalidArgument("metadata is not valid UTF-8", field="metadata")
        total += key_len + val_len
        out[key] = val
    if total > MAX_METADATA_BYTES:
        raise InvalidArgument(f"metadata is {total} bytes of UTF-8 (keys and values); at most "
                              f"{MAX_METADATA_BYTES} are allowed", field="metadata")
    return out


# --- upload ids ----------------------------------------------------------------------------


def new_upload_id() -> str:
    """A fresh upload id: 24 lowercase hex characters (URL-safe, never starting with '-')."""
    return secrets.token_hex(UPLOAD_ID_CHARS // 2)


def is_upload_id(value: str) -> bool:
    """True if `value` has the exact format `new_upload_id` produces (anything else was never issued)."""
    return isinstance(value, str) and _UPLOAD_ID.fullmatch(value) is not None


# --- names on disk -------------------------------------------------------------------------


def part_file_name(object_id: str, file_name: str, upload_id: str, *, put: bool = False) -> str:
    """`<object_id>_<file_name>.part.<upload_id>` (`.put.` for a one-call put's bytes in
    flight), shortened to fit in MAX_NAME_BYTES."""
    _check_disk_inputs(object_id, file_name, upload_id)
    mark = _PUT_MARK if put else _PART_MARK
    budget = MAX_NAME_BYTES - len(object_id) - 1 - len(mark) - len(upload_id)
    stem, ext = fit_file_name(file_name, budget)
    return f"{object_id}_{stem}{ext}{mark}{upload_id}"


def object_file_name(object_id: str, file_name: str, upload_id: str) -> str:
    """`<object_id>_<stem>_<upload_id><ext>`, shortened to fit in MAX_NAME_BYTES."""
    _check_disk_inputs(object_id, file_name, upload_id)
    budget = MAX_NAME_BYTES - len(object_id) - 1 - 1 - len(upload_id)
    stem, ext = fit_file_name(file_name, budget)
    return f"{object_id}_{stem}_{upload_id}{ext}"


_PART_UPLOAD_ID = re.compile(r"\.part\.([0-9a-f]{%d})$" % UPLOAD_ID_CHARS)
_OBJECT_UPLOAD_ID = re.compile(r"_([0-9a-f]{%d})(\.[^.]*)?$" % UPLOAD_ID_CHARS)
_PUT_UPLOAD_ID = re.compile(r"\.put\.([0-9a-f]{%d})$" % UPLOAD_ID_CHARS)


def is_put_file_name(name: str) -> bool:
    """Whether `name` is a one-call put's file in flight (`part_file_name(..., put=True)`)."""
    return _PUT_UPLOAD_ID.search(name) is not None


def upload_id_of_disk_name(name: str, *, part: bool) -> str | None:
    """The upload id inside a name `part_file_name` (part=True) or `object_file_name` made,
    or None. (The extension after it never holds a '.', so the last candidate is the one.)"""
    match = (_PART_UPLOAD_ID if part else _OBJECT_UPLOAD_ID).search(name)
    return match.group(1) if match else None


def fit_file_name(file_name: str, budget: int) -> tuple[str, str]:
    """(stem, ext) of `file_name`, cut so together they take at most `budget` UTF-8 bytes.

    The stem is shortened first (keeping its longest prefix that fits); only when the extension
    alone is over the budget is the stem dropped and the extension cut. Cuts fall on character
    boundaries.
    """
    stem, ext = os.path.splitext(file_name)
    stem_len, ext_len = len(stem.encode("utf-8")), len(ext.encode("utf-8"))
    if stem_len + ext_len <= budget:
        return stem, ext
    if ext_len <= budget:
        return utf8_prefix(stem, budget - ext_len), ext
    return "", utf8_prefix(ext, budget)


def utf8_prefix(text: str, max_bytes: int) -> str:
    """The longest prefix of `text` whose UTF-8 encoding takes at most `max_bytes` bytes."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    end = max(max_bytes, 0)
    # raw[end] is the first byte left out; if it continues a character, that character is cut:
    # step back to its first byte so the whole character is left out.
    while end > 0 and (raw[end] & 0xC0) == 0x80:
        end -= 1
    return raw[:end].decode("utf-8")


def _check_disk_inputs(object_id: str, file_name: str, upload_id: str) -> None:
    validate_object_id(object_id)
    validate_file_name(file_name)
    if not isinstance(upload_id, str) or _DISK_UPLOAD_ID.fullmatch(upload_id) is None:
        raise InvalidName(f"upload id {upload_id!r} cannot be part of a file name",
                          field="upload_id")


def _utf8_len(value: str) -> int | None:
    """Bytes of `value` in UTF-8, or None if it cannot be encoded (a lone surrogate)."""
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return None
