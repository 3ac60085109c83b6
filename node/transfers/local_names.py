"""Local file names from names a node sent, or a person's paths: pure rules, no I/O.

Why apart: the single `get`, `get -r` and `put` all need them, and the node's word is never
trusted for a name this machine writes.
"""

from __future__ import annotations

import os
import re
import unicodedata

from node.names import MAX_NAME_BYTES, utf8_prefix

#: Unicode categories that never belong in a file name we create: control, format (bidi
#: overrides), surrogates, line and paragraph separators.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def safe_file_name(name: str, fallback: str = "") -> str:
    """A name `get` may create in a directory on its own, from a file name the node sent.

    The node's word is not trusted: only the last component survives (after '/' and '\\'),
    control, format and separator characters (NUL, newline, ESC, bidi overrides...) become '_',
    leading dots go (never a dot-file: '.bashrc' -> 'bashrc'), and the result fits in 255
    bytes of UTF-8, the extension kept where it can be. What is left empty ('', '.', '..')
    becomes `fallback` made safe the same way (the object id), else 'download'.
    """
    for candidate in (name, fallback):
        if not isinstance(candidate, str):
            continue
        base = re.split(r"[/\\]", candidate)[-1]
        base = "".join("_" if unicodedata.category(c) in UNSAFE_CATEGORIES else c for c in base)
        base = base.lstrip(".")
        if len(base.encode("utf-8")) > MAX_NAME_BYTES:
            stem, ext = os.path.splitext(base)
            if ext and len(ext.encode("utf-8")) <= 16:
                base = utf8_prefix(stem, MAX_NAME_BYTES - len(ext.encode("utf-8"))) + ext
            else:
                base = utf8_prefix(base, MAX_NAME_BYTES)
        if base.strip():
            return base
    return "download"


def local_file_name(path: str) -> str:
    """The base name of `path` as text that encodes to UTF-8 (undecodable bytes replaced)."""
    name = os.path.basename(os.path.abspath(path))
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in the name (surrogate escapes)
        name = os.fsencode(name).decode("utf-8", "replace")
    return name


