"""Whole directories: the planning behind `mini-oss put -r DIR` and `get -r PREFIX DIR`.

Why a module of its own: a tree is many single transfers (`node.transfers.resume.put`/`get`, each
resuming on a re-run exactly as alone) plus what only a tree has: which files there are, which
object id each one gets and back, what to skip, and one summary. Those rules are here, without
gRPC; `node.transfers.tree_run` moves the bytes, several files at a time.

Object ids and paths. An object id holds only `A-Z a-z 0-9 . _ -` (API.md "Names"), so a path
cannot be one as it stands. `put -r` escapes the path relative to DIR, byte by byte of its
UTF-8: letters, digits, '.' and '-' stay, '_' becomes `__`, every other byte (the '/' between
directories, a space, each byte of 'é') becomes `_XX` in upper-case hex, and a leading '.' of
the whole id `_2E`. So `docs/read me.txt` under `--prefix backup-` is `backup-docs_2Fread_20me.txt`;
an id longer than 128 characters is that file's error, not the tree's.

`get -r` reverses it for every object under PREFIX, and trusts none of it: the node could send
any id (`a_2F.._2F.._2Fx`, a literal `../x`, an empty remainder). After unescaping, a path with
an empty, '.' or '..' segment (so also an absolute one) is refused, control and format characters
become '_' (the rule of `local_names.safe_file_name`), and the path is joined below DIR one segment at a
time by `tree_run`, which never follows a symbolic link on the way. An id that is not an escape
put -r made (`img_1.jpg`) is taken as it is: `_` followed by anything but `_` or two upper-case
hex digits stays `_`. Leading dots are kept: inside a directory the person chose, a dot-file is
part of the tree (put -r uploads them).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import string
import unicodedata
from typing import Any, Iterator

from node.transfers.local_names import UNSAFE_CATEGORIES
from node.errors import InvalidName
from node.names import validate_object_id
from node.transfers.progress import human_size
from node.transfers.transfer_state import PARTIAL_SUFFIX

#: Bytes put -r keeps as they are in an object id; '_' is the escape.
_KEPT = frozenset((string.ascii_letters + string.digits + ".-").encode())
_ESCAPE = "_"
_HEX = frozenset("0123456789ABCDEF")


class UnsafePath(ValueError):
    """An object id that names no path inside the destination directory."""


# --------------------------------------------------------------------------------------------
# Object id <-> relative path


def object_id_for(prefix: str, relative: str) -> str:
    """The object id put -r gives the file at `relative` ('/'-separated, below DIR); raises
    InvalidName when it cannot be one (too long)."""
    escaped = []
    for byte in os.fsencode(relative):
        if byte in _KEPT:
            escaped.append(chr(byte))
        elif byte == ord(_ESCAPE):
            escaped.append(_ESCAPE * 2)
        else:
            escaped.append(f"{_ESCAPE}{byte:02X}")
    if not prefix and escaped and escaped[0] == ".":  # an object id never starts with '.'
        escaped[0] = f"{_ESCAPE}{ord('.'):02X}"
    object_id = prefix + "".join(escaped)
    try:
        return validate_object_id(object_id)
    except InvalidName as err:
        raise InvalidName(f"{relative!r} cannot be an object id: {err.message}",
                          field="object_id") from None


def relative_path_for(prefix: str, object_id: str) -> str:
    """The '/'-separated path below DIR that get -r writes `object_id` to, made safe; raises
    UnsafePath for an id that would leave DIR, or name DIR itself."""
    if not object_id.startswith(prefix):
        raise UnsafePath(f"not under the prefix {prefix!r}")
    text = os.fsdecode(_unescape(object_id[len(prefix):]))
    segments = text.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise UnsafePath(f"names the path {text!r}, which would not stay inside the "
                         f"directory: not written")
    safe = "/".join(_safe_segment(segment) for segment in segments)
    if safe.endswith(PARTIAL_SUFFIX):
        raise UnsafePath(f"ends in {PARTIAL_SUFFIX!r}, the name get keeps unfinished "
                         f"downloads under: not written")
    return safe


def _unescape(text: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(text):
        pair = text[i + 1:i + 3]
        if text[i] == _ESCAPE and pair[:1] == _ESCAPE:
            out += _ESCAPE.encode()
            i += 2
        elif text[i] == _ESCAPE and len(pair) == 2 and set(pair) <= _HEX:
            out.append(int(pair, 16))
            i += 3
        else:  # not an escape: the character itself (a foreign id, or a hostile one)
            out += text[i].encode("utf-8", "surrogateescape")
            i += 1
    return bytes(out)


def _safe_segment(segment: str) -> str:
    return "".join("_" if unicodedata.category(c) in UNSAFE_CATEGORIES else c for c in segment)


# --------------------------------------------------------------------------------------------
# The local tree


@dataclasses.dataclass(frozen=True)
class LocalFile:
    relative: str   # '/'-separated, below DIR
    path: str       # as found on disk (DIR joined with it)
    size: int


@dataclasses.dataclass(frozen=True)
class Skipped:
    relative: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Unreadable:
    relative: str
    error: OSError


def walk(root: str) -> Iterator[LocalFile | Skipped | Unreadable]:
    """Every entry below `root`, sorted by name, depth first: the regular files (a symbolic
    link to one counts as one), and what put -r leaves out (a link to a directory is never
    followed, so a tree cannot loop or leave DIR) or cannot read."""
    yield from _walk(root, "")


def _walk(directory: str, relative: str) -> Iterator[LocalFile | Skipped | Unreadable]:
    try:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as err:
        yield Unreadable(relative or ".", err)
        return
    for entry in entries:
        rel = f"{relative}{entry.name}"
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(entry.path, rel + "/")
                continue
            if entry.is_symlink():
                try:
                    st = os.stat(entry.path)
                except OSError:
                    yield Skipped(rel, "a broken symbolic link")
                    continue
                if stat.S_ISDIR(st.st_mode):
                    yield Skipped(rel, "a symbolic link to a directory")
                    continue
            else:
                st = entry.stat(follow_symlinks=False)
        except OSError as err:
            yield Unreadable(rel, err)
            continue
        if not stat.S_ISREG(st.st_mode):
            yield Skipped(rel, "not a regular file")
        elif entry.name.endswith(PARTIAL_SUFFIX):
            yield Skipped(rel, "an unfinished download of mini-oss get")
        else:
            yield LocalFile(rel, entry.path, st.st_size)


# --------------------------------------------------------------------------------------------
# What a run did


def shown(relative: str) -> str:
    """A path for a one-line message: as it is, or quoted with escapes if it holds a newline,
    a control character or undecodable bytes."""
    return relative if relative.isprintable() else repr(relative)


@dataclasses.dataclass(frozen=True)
class Failure:
    where: str       # the path below DIR ('' when the id names none)
    object_id: str
    error: str       # one line, as messages.format_error writes it

    def line(self) -> str:
        where = shown(self.where)
        if where and self.object_id:
            where = f"{where} ({self.object_id})"
        return f"{where or self.object_id}: {self.error}"

    def to_dict(self) -> dict[str, str]:
        return {"path": self.where, "object_id": self.object_id, "error": self.error}


@dataclasses.dataclass
class Tally:
    """Counts of one put -r or get -r, for the closing line and --json."""

    command: str                 # "put" or "get"
    files: int = 0               # regular files found (put) or objects listed (get)
    moved: int = 0
    moved_bytes: int = 0
    unchanged: int = 0
    skipped: int = 0             # entries that are not regular files (put)
    not_started: int = 0         # left when a failure stopped the run
    failures: list[Failure] = dataclasses.field(default_factory=list)

    @property
    def verb(self) -> str:
        return "uploaded" if self.command == "put" else "downloaded"

    def summary_line(self, seconds: float) -> str:
        """'put -r: 200 files, 198 uploaded (1.2 MiB), 1 skipped (unchanged), 1 failed in 3.4s'."""
        parts = [f"{self.files} files",
                 f"{self.moved} {self.verb} ({human_size(self.moved_bytes)})"]
        for count, text in ((self.unchanged, "skipped (unchanged)"),
                            (self.skipped, "skipped (not regular files)"),
                            (len(self.failures), "failed"), (self.not_started, "not started")):
            if count:
                parts.append(f"{count} {text}")
        return f"{self.command} -r: {', '.join(parts)} in {seconds:.1f}s"

    def to_dict(self, seconds: float) -> dict[str, Any]:
        return {"command": self.command, "files": self.files, self.verb: self.moved,
                "bytes": self.moved_bytes, "unchanged": self.unchanged, "skipped": self.skipped,
                "failed": len(self.failures), "not_started": self.not_started,
                "seconds": round(seconds, 3),
                "failures": [failure.to_dict() for failure in self.failures]}
