"""Bytes on disk: the `parts/`, `objects/` and `index/` layout of the seed design.

    parts/<object_id>_<file_name>.part.<upload_id>     an upload in flight
    objects/<object_id>_<stem>_<upload_id><ext>          a committed version (immutable)
    index/<object_id> -> ../objects/<file>               the current version, a relative symlink

Everything here is blocking file I/O, run by the caller in a thread pool. This module knows
nothing of sessions' rules or of the catalog; it offers the steps and the node logic orders
them:

* A stream's exclusive claim on a session is `flock(LOCK_EX | LOCK_NB)` on its part file:
  it works across worker processes, between two opens in one process, and dies with its holder.
* Writes are `os.pwrite` at the offset the session rules chose, with O_DIRECT where the file
  system takes it (node.direct_io says why); durability is `fdatasync`.
* Commit is: fsync the part, rename it into `objects/`, fsync `objects/`; then (inside the
  catalog's write transaction) swap the index symlink by renaming a fresh symlink over it.
  A reader that opens `index/<object_id>` sees the old version or the new one, never a mix,
  a partial file, or nothing.

Disk-full conditions (ENOSPC, EDQUOT, EFBIG from RLIMIT_FSIZE) become `DiskFull`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from typing import Iterator, NoReturn

from node.direct_io import DirectAppender, open_direct
from node.errors import DiskFull, SessionBusy

PARTS, OBJECTS, INDEX, QUARANTINE = "parts", "objects", "index", "quarantine"
READ_BLOCK = 1 << 20
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _raise_typed(exc: OSError, message: str) -> NoReturn:
    """Re-raise an OSError from a write or sync: as DiskFull(message) when the disk is full."""
    if exc.errno in _DISK_FULL_ERRNOS:
        raise DiskFull(message) from exc
    raise exc


def _unlink_if_present(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class PartClaim:
    """An open, exclusively locked part file: the holder may write the session's bytes.

    Writes go through a `DirectAppender` (O_DIRECT where the file system takes it), which may
    hold the last partial block in memory: `size()` and the hashes see the file, so `sync`,
    `hash_prefix` and `Storage.promote` flush that block first.
    """

    def __init__(self, path: str, fd: int, direct_fd: int | None = None) -> None:
        self.path = path
        self.fd = fd
        self.appender = DirectAppender(fd, direct_fd)

    def size(self) -> int:
        self.flush()
        return os.fstat(self.fd).st_size

    def truncate(self, length: int) -> None:
        self.flush()
        os.ftruncate(self.fd, length)
        self.appender.forget()

    def write(self, offset: int, data: memoryview | bytes) -> None:
        try:
            self.appender.write(offset, data)
        except OSError as exc:
            _raise_typed(exc, "no space left for the upload")

    def flush(self) -> None:
        try:
            self.appender.flush()
        except OSError as exc:
            _raise_typed(exc, "no space left for the upload")

    def sync(self) -> None:
        self.flush()
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            _raise_typed(exc, "no space left to make the upload durable")

    def hash_prefix(self, length: int, start: int = 0, hasher=None):
        """SHA-256 over [start, length) of the part, continuing `hasher` if given."""
        hasher = hasher or hashlib.sha256()
        self.flush()
        offset = start
        while offset < length:
            block = os.pread(self.fd, min(READ_BLOCK, length - offset), offset)
            if not block:
                raise OSError(errno.EIO, f"part file {self.path} is shorter than {length}")
            hasher.update(block)
            offset += len(block)
        return hasher

    def release(self) -> None:
        # A held tail that no sync covered is dropped: those bytes were never durable, and a
        # resume starts from the durable offset.
        self.appender.close()
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


@dataclass(frozen=True)
class Layout:
    root: str

    @property
    def parts(self) -> str:
        return os.path.join(self.root, PARTS)

    @property
    def objects(self) -> str:
        return os.path.join(self.root, OBJECTS)

    @property
    def index(self) -> str:
        return os.path.join(self.root, INDEX)

    def part(self, part_name: str) -> str:
        return os.path.join(self.parts, part_name)

    def object(self, disk_name: str) -> str:
        return os.path.join(self.objects, disk_name)

    def index_entry(self, object_id: str) -> str:
        return os.path.join(self.index, object_id)


class Storage:
    def __init__(self, root: str, *, direct_io: bool = True) -> None:
        self.layout = Layout(os.path.abspath(root))
        self.direct_io = direct_io
        for path in (self.layout.root, self.layout.parts, self.layout.objects, self.layout.index):
            os.makedirs(path, exist_ok=True)

    # -- parts --------------------------------------------------------------------------------

    def create_part(self, part_name: str) -> None:
        """Create the (empty) part file; one that exists already is left as it is."""
        path = self.layout.part(part_name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            _raise_typed(exc, "no space left to start an upload")
        os.close(fd)

    def part_exists(self, part_name: str) -> bool:
        return os.path.exists(self.layout.part(part_name))

    def claim(self, path: str) -> PartClaim | None:
        """Open and lock the file at `path`; None if it does not exist; SessionBusy if held."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SessionBusy("another stream is writing to this session") from None
        # The file may have been renamed or removed between open and lock: make sure the
        # locked inode is still the one at `path`.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return None
        return PartClaim(path, fd, open_direct(path) if self.direct_io else None)

    def create_put(self, part_name: str) -> PartClaim:
        """Create a one-call put's file in parts/ and hold its lock from the start: recovery
        on any node leaves a held file alone (`unheld`). Buffered: the bytes are one message."""
        path = self.layout.part(part_name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            _raise_typed(exc, "no space left to store the object")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new inode: nobody else can hold it
        return PartClaim(path, fd)

    @contextlib.contextmanager
    def unheld(self, kind: str, name: str) -> Iterator[bool]:
        """Hold the lock of parts/ or objects/ `name` for the block if no process holds it:
        yields True then, False if it is held (a stream or a put at work) or gone."""
        path = os.path.join(self.layout.root, kind, name)
        try:  # (read-write: over NFS, flock becomes a POSIX write lock, which needs one)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def age(self, kind: str, name: str) -> float:
        """Seconds since parts/ or objects/ `name` was last written (0 if it is gone)."""
        try:
            return time.time() - os.lstat(os.path.join(self.layout.root, kind, name)).st_mtime
        except FileNotFoundError:
            return 0.0

    def part_names(self) -> list[str]:
        return os.listdir(self.layout.parts)

    # -- commit -------------------------------------------------------------------------------

    def promote(self, claim: PartClaim, disk_name: str) -> None:
        """Make the part durable and move it into objects/ (the claim stays held)."""
        claim.flush()
        try:
            os.fsync(claim.fd)
        except OSError as exc:
            _raise_typed(exc, "no space left to commit the object")
        target = self.layout.object(disk_name)
        try:
            os.rename(claim.path, target)  # a new name may need a new directory block
        except OSError as exc:
            _raise_typed(exc, "no space left to commit the object")
        claim.path = target
        self.fsync_dir(self.layout.objects)

    def demote(self, disk_name: str, part_name: str) -> None:
        """Undo `promote` (a commit that did not happen): objects/ back to parts/."""
        os.rename(self.layout.object(disk_name), self.layout.part(part_name))

    def publish(self, object_id: str, disk_name: str) -> None:
        """Point index/<object_id> at objects/<disk_name>, replacing any old entry atomically."""
        self.publish_staged(object_id, self.stage_index_entry(object_id, disk_name))

    def stage_index_entry(self, object_id: str, disk_name: str) -> str:
        """A new index entry for `object_id`, made but not yet in place (`publish_staged` puts
        it there; `discard_staged` drops it). Making it allocates an inode, which is slow on a
        busy file system: a commit does it before it takes the catalog's write lock."""
        staged = os.path.join(self.layout.index, f".tmp.{object_id}.{secrets.token_hex(6)}")
        try:
            os.symlink(os.path.join("..", OBJECTS, disk_name), staged)
        except OSError as exc:
            _raise_typed(exc, "no space left to commit the object")
        return staged

    def publish_staged(self, object_id: str, staged: str) -> None:
        os.rename(staged, self.layout.index_entry(object_id))

    @staticmethod
    def discard_staged(staged: str) -> None:
        """Drop a staged entry that was not put in place (nothing if it was)."""
        _unlink_if_present(staged)

    def unpublish(self, object_id: str) -> None:
        _unlink_if_present(self.layout.index_entry(object_id))

    def index_target(self, object_id: str) -> str | None:
        """The objects/ file name index/<object_id> points to, or None."""
        try:
            return os.path.basename(os.readlink(self.layout.index_entry(object_id)))
        except (FileNotFoundError, OSError):
            return None

    def index_names(self) -> list[str]:
        return os.listdir(self.layout.index)

    def remove_index_name(self, name: str) -> None:
        _unlink_if_present(os.path.join(self.layout.index, name))

    # -- objects ------------------------------------------------------------------------------

    def open_object(self, disk_name: str) -> int | None:
        """An fd of a committed version (it stays readable if the version is later replaced)."""
        try:
            return os.open(self.layout.object(disk_name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None

    def object_exists(self, disk_name: str) -> bool:
        return os.path.exists(self.layout.object(disk_name))

    def object_names(self) -> list[str]:
        return os.listdir(self.layout.objects)

    # -- freeing and keeping aside ----------------------------------------------------------

    def free(self, kind: str, name: str) -> None:
        """Unlink a file the catalog has let go of (kind: PARTS or OBJECTS); gone already is fine."""
        if kind not in (PARTS, OBJECTS) or os.sep in name or name in ("", ".", ".."):
            raise ValueError(f"not a file of the layout: {kind}/{name}")
        _unlink_if_present(os.path.join(self.layout.root, kind, name))

    def quarantine(self, kind: str, name: str) -> str:
        """Move a file nobody knows about out of the way, to quarantine/<kind>/, and return its
        new path. Recovery never destroys bytes it cannot account for: an operator decides."""
        target_dir = os.path.join(self.layout.root, QUARANTINE, kind)
        os.makedirs(target_dir, exist_ok=True)
        target = os.path.join(target_dir, name)
        n = 0
        while os.path.lexists(target):
            n += 1
            target = os.path.join(target_dir, f"{name}.{n}")
        os.rename(os.path.join(self.layout.root, kind, name), target)
        self.fsync_dir(target_dir)
        return target

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def fsync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def free_bytes(self) -> int:
        st = os.statvfs(self.layout.root)
        return st.f_bavail * st.f_frsize
