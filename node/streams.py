"""One stream's hold on the data: an upload's claim, hash and offsets; a download's open file.

`UploadStream` is what an Upload RPC holds between its first message and its end: the
exclusive claim on the session's part file, the running SHA-256, the verified offset and the
durable one. Per chunk it does only what DESIGN.md allows: check the size and CRCs, ask the
session rules where the bytes go, pwrite, hash; a checkpoint (fdatasync, then one catalog
write) every `checkpoint_bytes` or `checkpoint_interval`; the commit when the object is
complete. `DownloadReader` is an open committed version and the range to send from it.

Both are blocking and run in the worker's thread pool; the Store (node.store) creates them.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Sequence

from node import failpoints, page_cache
from node.checksums import crc32 as crc32_of, crc32c as crc32c_of
from node.catalog import ObjectRecord, SessionRecord
from node.errors import (ChecksumMismatch, ChunkTooLarge, GenerationMismatch, InvalidArgument,
                         ObjectExists, SessionNotFound, Sha256Mismatch)
from node.session_rules import (State, is_complete, merge_expected_sha256,
                                plan_chunk, transition)
from node.direct_io import open_direct_read, pread_direct
from node.storage import OBJECTS, PARTS, PartClaim
from node.wire import encode_download_chunk

if TYPE_CHECKING:
    from node.store import Store

log = logging.getLogger("mini_oss.streams")
HASH_CACHE_SIZE = 256


class HashCache:
    """SHA-256 states of recently released sessions, so a resume in this process need not
    re-read the part file. An entry is only used when its offset is the session's checkpoint:
    bytes below a checkpoint never change."""

    def __init__(self, size: int = HASH_CACHE_SIZE) -> None:
        self._entries: collections.OrderedDict[str, tuple[int, object]] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def put(self, upload_id: str, offset: int, hasher) -> None:
        with self._lock:
            self._entries[upload_id] = (offset, hasher.copy())
            self._entries.move_to_end(upload_id)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def take(self, upload_id: str, offset: int):
        with self._lock:
            entry = self._entries.pop(upload_id, None)
        if entry is not None and entry[0] <= offset:
            return entry
        return None

    def drop(self, upload_id: str) -> None:
        with self._lock:
            self._entries.pop(upload_id, None)


def verify_chunk(data: bytes, crc32: int | None, crc32c: int | None, max_chunk_size: int,
                 offset: int = 0) -> None:
    """The checks every message of bytes passes first (an Upload chunk, a whole put): its
    size, then each CRC it carries, over the data exactly as sent."""
    if len(data) > max_chunk_size:
        raise ChunkTooLarge(f"chunk of {len(data)} bytes exceeds max_chunk_size",
                            max_chunk_size=max_chunk_size)
    if crc32 is not None and crc32_of(data) != crc32:
        raise ChecksumMismatch("crc32 of the chunk does not match", offset=offset)
    if crc32c is not None and crc32c_of(data) != crc32c:
        raise ChecksumMismatch("crc32c of the chunk does not match", offset=offset)


class UploadStream:
    """One Upload stream's hold on a session: the claim, the running hash, the offsets.

    Calls come from pool threads, one at a time per stream in the normal course; the lock
    also orders the cleanup that a cancelled stream schedules behind a chunk still in flight.
    """

    def __init__(self, store: Store, rec: SessionRecord, claim: PartClaim | None) -> None:
        self.store = store
        self.rec = rec
        self.claim = claim
        self.offset = rec.uploaded_offset
        self.durable_offset = rec.uploaded_offset
        self.sha256 = rec.sha256
        self._durable_sha256 = rec.sha256
        self.committed: ObjectRecord | None = rec.object if rec.state is State.COMMITTED else None
        self._lock = threading.Lock()
        self._hasher = None
        self._since_checkpoint = 0
        self._checkpoint_at = time.monotonic() + store.settings.checkpoint_interval

    @property
    def upload_id(self) -> str:
        return self.rec.upload_id

    @property
    def replay(self) -> bool:
        return self.claim is None

    def _ensure_hasher(self) -> None:
        if self._hasher is not None:
            return
        cached = self.store.hashes.take(self.upload_id, self.offset)
        if cached is not None:
            start, hasher = cached
        else:
            start, hasher = 0, hashlib.sha256()
        assert self.claim is not None
        self._hasher = self.claim.hash_prefix(self.offset, start, hasher)

    def accept(self, offset: int, data: bytes, crc32: int | None, crc32c: int | None, sha256: str) -> None:
        """Verify and store one chunk; commit when the object is complete."""
        with self._lock:
            settings = self.store.settings
            verify_chunk(data, crc32, crc32c, settings.max_chunk_size, offset)
            if self.replay:
                return  # a committed session: every chunk is a duplicate
            if self.rec.is_slice:
                if sha256:
                    raise InvalidArgument("a slice has no SHA-256 of its own: send the object's "
                                          "when creating or committing its sliced session",
                                          field="sha256")
            else:
                self.sha256 = merge_expected_sha256(self.sha256, sha256)
            plan = plan_chunk(uploaded_offset=self.offset, file_size=self.rec.file_size,
                              offset=offset, length=len(data), max_chunk_size=settings.max_chunk_size)
            if plan.length:
                view = memoryview(data)[plan.skip:plan.skip + plan.length]
                assert self.claim is not None
                if not self.rec.is_slice:  # a slice is hashed once, in object order, at commit
                    self._ensure_hasher()
                self.claim.write(plan.write_at, view)
                failpoints.hit("chunk_written")
                if self._hasher is not None:
                    self._hasher.update(view)
                self.offset = plan.new_offset
                self._since_checkpoint += plan.length
                if (self._since_checkpoint >= settings.checkpoint_bytes
                        or time.monotonic() >= self._checkpoint_at):
                    self._checkpoint()
            if is_complete(self.offset, self.rec.file_size):
                self._complete()

    def _complete(self) -> None:
        """Every byte is here: commit the object; a slice is made durable instead (its sliced
        session commits the object once every slice is complete)."""
        if not self.rec.is_slice:
            self._commit()
        elif self.offset != self.durable_offset:
            self._checkpoint()

    def finish(self) -> tuple[SessionRecord, ObjectRecord | None]:
        """The client closed the stream: commit if complete, else checkpoint; release."""
        with self._lock:
            try:
                if not self.replay and self.committed is None and is_complete(self.offset, self.rec.file_size):
                    self._complete()
                self._release()
            except BaseException:
                self._release_quietly()
                raise
            return self.session(), self.committed

    def close(self) -> None:
        """The stream ended by an error or a cancel: keep what was verified, drop the claim."""
        with self._lock:
            self._release_quietly()

    def session(self) -> SessionRecord:
        if self.committed is not None:
            return self.rec  # as committed: this stream's commit wrote it, or the lookup read it
        return self.rec.replace(uploaded_offset=self.durable_offset, sha256=self._durable_sha256)

    def _release_quietly(self) -> None:
        try:
            self._release()
        except Exception:
            log.exception("checkpoint of %s failed; its durable offset stays %d",
                          self.upload_id, self.durable_offset)
            if self.claim is not None:
                self.claim.release()
                self.claim = None

    def _release(self) -> None:
        if self.claim is None:
            return
        if self.committed is None:
            if self.claim.size() > self.offset:  # a write that failed half-way
                self.claim.truncate(self.offset)
            # Even with no new bytes, the session's idle clock restarts when its stream ends
            # (at checkpoint granularity), so a live session is never shown as long expired.
            stale = self.rec.expires_at_ms < (self.store.now_ms() + self.store.ttl_ms
                                              - int(self.store.settings.checkpoint_interval * 1000))
            if self.offset != self.durable_offset or self.sha256 != self._durable_sha256 or stale:
                self._checkpoint()
            if self._hasher is not None:
                self.store.hashes.put(self.upload_id, self.offset, self._hasher)
        self.claim.release()
        self.claim = None

    def _checkpoint(self) -> None:
        assert self.claim is not None
        if self.offset != self.durable_offset:  # (else only the catalog's clock moves)
            self.claim.sync()
            if self.durable_offset == 0:
                # The part's directory entry becomes durable with its first bytes, not at
                # create: abandoned sessions and single-stream objects never pay for it.
                self.store.storage.fsync_dir(self.store.storage.layout.parts)
        failpoints.hit("checkpoint_synced")
        now = self.store.now_ms()
        expires = now + self.store.ttl_ms
        if not self.store.catalog.checkpoint(self.upload_id, self.offset, self.sha256, now, expires):
            raise SessionNotFound(f"upload session {self.upload_id!r} is no longer active")
        self.durable_offset = self.offset
        self._durable_sha256 = self.sha256
        self.rec = self.rec.replace(uploaded_offset=self.offset, sha256=self.sha256,
                                    updated_at_ms=now, expires_at_ms=expires)
        self._since_checkpoint = 0
        self._checkpoint_at = time.monotonic() + self.store.settings.checkpoint_interval

    def _commit(self, slices: Sequence[SessionRecord] = ()) -> None:
        """Verify the SHA-256, move the part into objects/ and record the object. A sliced
        session passes its `slices`: they are recorded COMMITTED in the same transaction and
        their parts become garbage (the caller, holding their claims, frees them)."""
        store, rec = self.store, self.rec
        assert self.claim is not None
        self._ensure_hasher()
        digest = self._hasher.hexdigest()
        if self.sha256 and digest != self.sha256:
            self._fail_commit()
            raise Sha256Mismatch("the object's SHA-256 does not match the expected hash",
                                 expected=self.sha256, actual=digest)
        started = time.monotonic()
        now = store.now_ms()
        disk_name = store.disk_name(rec)
        obj = ObjectRecord(object_id=rec.object_id, generation=rec.upload_id, file_name=rec.file_name,
                           size=rec.file_size, sha256=digest, content_type=rec.content_type,
                           metadata=rec.metadata, created_at_ms=now, disk_name=disk_name)
        store.storage.promote(self.claim, disk_name)
        failpoints.hit("commit_renamed")

        try:
            replaced = store.record_version(
                rec, obj, now, slices=[(s.upload_id, (PARTS, store.part_name(s))) for s in slices])
        except (ObjectExists, GenerationMismatch):
            # Still holding the claim: end the session (its promoted file becomes garbage in
            # the same transaction), then free the file, then let go. A claimer that comes
            # after the release finds an ended session, never an ACTIVE one without bytes.
            state = transition(rec.state, "fail_commit")
            store.catalog.end_session(rec.upload_id, state, now, now + store.ttl_ms,
                                      free=[(OBJECTS, disk_name)])
            store.storage.free(OBJECTS, disk_name)
            self.claim.release()
            self.claim = None
            store.hashes.drop(rec.upload_id)
            store.events.add("sessions_aborted")
            self.committed = None
            raise
        except BaseException as exc:
            if getattr(exc, "maybe_done", False):
                # The catalog's database went away inside the transaction: it may have
                # committed. The file stays in objects/, where that row would name it; the
                # next claim moves it back only if the session is still ACTIVE (_find_part).
                raise
            # The transaction rolled back: put the bytes back where a resume expects them.
            store.repair_index(rec.object_id)
            store.storage.demote(disk_name, store.part_name(rec))
            self.claim.path = store.storage.layout.part(store.part_name(rec))
            raise
        store.settle_version(obj, replaced)
        self.committed = obj
        self.rec = rec.replace(state=State.COMMITTED, uploaded_offset=obj.size, updated_at_ms=now,
                               expires_at_ms=now + store.ttl_ms, object=obj)
        self.durable_offset = self.offset
        self.claim.release()
        self.claim = None
        store.hashes.drop(rec.upload_id)
        store.events.add("sessions_committed")
        store.events.add("objects_committed")
        store.events.observe("commit_seconds", time.monotonic() - started)

    def _fail_commit(self) -> None:
        assert self.claim is not None
        try:
            self.store.end_session(self.rec, "fail_commit")
        finally:
            self.claim.release()
            self.claim = None


class DownloadReader:
    """An open committed version and the range to send from it.

    Chunks that are in the page cache are read from it; the others, with `direct` on, are read
    around it with O_DIRECT (node.page_cache and node.direct_io say why), and then nothing is
    read ahead through the cache either. With `direct` off, or where the kernel cannot say what
    is cached or the file system refuses O_DIRECT, reads are buffered and the kernel is asked
    to read `readahead` bytes ahead."""

    def __init__(self, fd: int, obj: ObjectRecord, start: int, end: int, chunk_size: int,
                 readahead: int = 0, direct: bool = False) -> None:
        self.fd = fd
        self.object = obj
        self.start = start
        self.end = end
        self.chunk_size = chunk_size
        self.direct_fd = open_direct_read(fd) if direct and end > start else None
        if self.direct_fd is not None and page_cache.cached_pages(fd, start, end - start) is None:
            self._close_direct()  # no way to tell cached from cold: the buffered path for all
        #: How far ahead of the stream the kernel is asked to read (0: leave it to the kernel).
        self.readahead = readahead if self.direct_fd is None else 0
        self._advised = start  # [start, _advised) has been asked for
        if self.readahead:
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_SEQUENTIAL)

    def cached(self, offset: int) -> bool:
        """Is the chunk at `offset` in the page cache (so that reading it is a memory copy, not
        a wait for the disk)? False where the kernel cannot say."""
        return bool(page_cache.fully_cached(self.fd, offset, min(self.chunk_size, self.end - offset)))

    def message(self, offset: int, object_info: bytes = b"", *,
                cached: bool | None = None) -> tuple[bytes, int]:
        """The DownloadChunk message of the chunk at `offset`, and its data length. Encoded
        here, in the thread that read it: a direct read's bytes live in that thread's buffer.
        `cached`: what `cached(offset)` said, if the caller asked already (None: ask here)."""
        data, crc = self._chunk(offset, cached)
        return encode_download_chunk(offset, data, crc, object_info), len(data)

    def _chunk(self, offset: int, cached: bool | None):
        want = min(self.chunk_size, self.end - offset)
        if cached is None and self.direct_fd is not None:
            cached = self.cached(offset)
        if self.direct_fd is not None and not cached:
            try:
                data = pread_direct(self.direct_fd, offset, want)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._close_direct()  # an alignment this device refuses: buffered from now on
                data = os.pread(self.fd, want, offset)
        else:
            if self.readahead:
                self._read_ahead(offset + want)
            data = os.pread(self.fd, want, offset)
        if len(data) != want:
            raise OSError(f"object file of {self.object.object_id} is shorter than its record")
        return data, crc32_of(data)

    def _read_ahead(self, position: int) -> None:
        """Keep [position, position + readahead) on its way from the disk: the kernel reads it
        asynchronously, so the next preads find it cached. Asked for in halves of the window,
        so the kernel sees a few large requests rather than one per chunk."""
        if self._advised - position > self.readahead // 2:
            return
        ahead = max(self._advised, position)
        until = min(self.end, position + self.readahead)
        if until <= ahead:  # (a length of 0 would mean "to the end of the file")
            return
        os.posix_fadvise(self.fd, ahead, until - ahead, os.POSIX_FADV_WILLNEED)
        self._advised = until

    def _close_direct(self) -> None:
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None

    def close(self) -> None:
        self._close_direct()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
