"""What the command line remembers between runs, so that a re-run of `put` or `get` resumes.

Why: the library resumes inside one process; a person who presses Ctrl-C (or whose terminal,
laptop or node went away) runs the same command again, in a new process. Like gsutil's tracker
files and tus-js-client's fingerprint store, each unfinished transfer leaves one small JSON entry
in `$XDG_CACHE_HOME/mini-oss/` (default `~/.cache/mini-oss/`, mode 0600), keyed by what the
person typed: the node address, the object id and the local file's absolute path.

An upload entry holds the session (`upload_id`) and the identity of the file it was started from
(size, mtime_ns, inode, device, ctime_ns) plus the file's SHA-256 as sent at session creation.
A re-run resumes only if the file still has that identity: bytes of two versions are never
spliced (the node's SHA-256 check at commit is the last guard, not the plan).

A download entry holds the generation the partial file was pinned to, and its size and SHA-256;
the partial bytes live next to the target as `<target>.mini-oss-partial`. A one-stream download
keeps a prefix there (its length is the file's size). A parallel one (`get --parallel`) keeps
the whole-size file with holes, so its entry also says how far each range has got: `ranges`,
triples (start, end, done). Such an entry is written as version 2; one without ranges stays
version 1, byte for byte what earlier releases wrote, so either kind is read by this one. An
entry of a version this release does not know is dropped, never guessed at.

Everything here is pure apart from `StateStore`'s reads and writes of entry files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from typing import Any, Mapping

#: Set in an error's metadata when the entry was kept: the same command run again resumes.
RERUN_RESUMES = "rerun_resumes"

UPLOAD = "upload"
DOWNLOAD = "download"
PARTIAL_SUFFIX = ".mini-oss-partial"
_MAX_NAME_BYTES = 255


class StateError(ValueError):
    """An entry file that cannot be read as an entry (it is dropped, never trusted)."""


@dataclasses.dataclass(frozen=True)
class FileIdentity:
    """What says a local file is still the one an upload started from."""

    size: int
    mtime_ns: int
    inode: int
    device: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileIdentity":
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino, device=st.st_dev,
                   ctime_ns=st.st_ctime_ns)


def change_reason(then: FileIdentity, now: FileIdentity) -> str | None:
    """Why the file `now` is not the file `then` (None: the same file, unchanged)."""
    if (then.inode, then.device) != (now.inode, now.device):
        return "it was replaced by another file"
    if then.size != now.size:
        return f"its size changed from {then.size} to {now.size} bytes"
    if then.mtime_ns != now.mtime_ns or then.ctime_ns != now.ctime_ns:
        return "it was modified"
    return None


@dataclasses.dataclass(frozen=True)
class UploadEntry:
    node: str
    object_id: str
    path: str
    upload_id: str
    sha256: str
    file: FileIdentity


@dataclasses.dataclass(frozen=True)
class DownloadEntry:
    node: str
    object_id: str
    path: str          # the target file
    generation: str    # what the partial file's bytes belong to
    size: int
    sha256: str
    #: Per-range progress of a parallel download, (start, end, done) each; () = one stream.
    ranges: tuple[tuple[int, int, int], ...] = ()


def entry_key(kind: str, node: str, object_id: str, path: str) -> str:
    """The entry's file name: a digest of what identifies the transfer (no user text in it)."""
    ident = "\0".join([kind, node, object_id, os.path.abspath(path)])
    return f"{kind}-{hashlib.sha256(ident.encode('utf-8', 'surrogateescape')).hexdigest()[:40]}.json"


def partial_path(target: str) -> str:
    """Where a download keeps its bytes until verified: `<target>.mini-oss-partial`, or a
    shortened name in the same directory when that would not fit in 255 bytes."""
    directory, name = os.path.split(target)
    if len(os.fsencode(name + PARTIAL_SUFFIX)) <= _MAX_NAME_BYTES:
        return target + PARTIAL_SUFFIX
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    short = os.fsencode(name)[:120].decode("utf-8", "ignore")
    return os.path.join(directory, f"{short}.{digest}{PARTIAL_SUFFIX}")


def cache_dir(environ: Mapping[str, str] = os.environ) -> str:
    """`$XDG_CACHE_HOME/mini-oss`, or `~/.cache/mini-oss` (the XDG base directory default)."""
    base = environ.get("XDG_CACHE_HOME") or ""
    if not os.path.isabs(base):  # the spec says a relative value is to be ignored
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mini-oss")


#: The newest entry format: 1 = no per-range progress, 2 = a download with `ranges`.
VERSION = 2


def _to_json(entry: UploadEntry | DownloadEntry) -> dict[str, Any]:
    kind = UPLOAD if isinstance(entry, UploadEntry) else DOWNLOAD
    data = dataclasses.asdict(entry)
    version = 1
    if kind == DOWNLOAD:
        if entry.ranges:
            version = 2
        else:
            del data["ranges"]
    return {"kind": kind, "version": version, **data}


def _from_json(data: Any) -> UploadEntry | DownloadEntry:
    try:
        kind = data.pop("kind")
        version = data.pop("version", 1)
        if not isinstance(version, int) or not 1 <= version <= VERSION:
            raise StateError(f"entry version {version!r} is not one this release reads")
        if kind == UPLOAD:
            data["file"] = FileIdentity(**data["file"])
            return UploadEntry(**data)
        if kind == DOWNLOAD:
            ranges = data.pop("ranges", [])
            if version < 2 and ranges:
                raise StateError("a version 1 entry has no ranges")
            if not all(isinstance(r, list) and len(r) == 3 and all(type(x) is int for x in r)
                       for r in ranges):
                raise StateError("ranges must be [start, end, done] integer triples")
            return DownloadEntry(**data, ranges=tuple(tuple(r) for r in ranges))
    except (AttributeError, KeyError, TypeError) as exc:
        raise StateError(f"not a transfer entry: {exc}") from None
    raise StateError(f"unknown entry kind {kind!r}")


class StateStore:
    """The entry files of one cache directory (created 0700 on first write, files 0600)."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or cache_dir()

    def _file(self, kind: str, node: str, object_id: str, path: str) -> str:
        return os.path.join(self.directory, entry_key(kind, node, object_id, path))

    def load(self, kind: str, node: str, object_id: str, path: str
             ) -> UploadEntry | DownloadEntry | None:
        """The entry, or None if there is none (or it is unreadable: then it is removed)."""
        file = self._file(kind, node, object_id, path)
        try:
            with open(file, encoding="utf-8") as f:
                entry = _from_json(json.load(f))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # torn or foreign: never trusted, never resumed from
            remove_if_present(file)
            return None
        if (entry.node, entry.object_id, entry.path) != (node, object_id, os.path.abspath(path)):
            remove_if_present(file)  # a digest collision, or an edited file: not ours
            return None
        return entry

    def save(self, entry: UploadEntry | DownloadEntry) -> None:
        """Write atomically (temporary file, fsync, rename), mode 0600."""
        kind = UPLOAD if isinstance(entry, UploadEntry) else DOWNLOAD
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".entry-", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(_to_json(entry), f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._file(kind, entry.node, entry.object_id, entry.path))
        except BaseException:
            remove_if_present(tmp)
            raise

    def drop(self, kind: str, node: str, object_id: str, path: str) -> None:
        remove_if_present(self._file(kind, node, object_id, path))


def remove_if_present(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
