"""The node's logic: what happens to sessions and objects, in what order.

Three layers (STYLE.md): the servicer parses requests and maps errors; this module decides;
`storage` and `catalog` store. Every method here is blocking and is run by the servicer in the
worker's thread pool; nothing here knows about gRPC.

Ordering rules that keep objects whole across crashes of any process:

* create:  the session row first, then its empty part file. A crash in between leaves an
           ACTIVE session at offset 0 without a part, which its first claim creates; never a
           part that no row accounts for.
* write:   pwrite, hash; nothing else per chunk. A checkpoint is fdatasync, then one catalog
           write of `uploaded_offset`: the catalog never claims bytes the disk may not have.
* commit:  fsync + rename into objects/ + fsync objects/ (outside the catalog lock); then one
           write transaction checks the preconditions, swaps index/<object_id> and records the
           object and the session as COMMITTED; then the replaced version's file is unlinked.
           A crash before the transaction leaves the file in objects/ with an ACTIVE session:
           the next claim (or recovery) moves it back to parts/ and the upload can finish.
* put:     a one-call put (node.puts) writes parts/<...>.put.<upload_id> under its lock, then
           commits as above with its session row born COMMITTED in the same transaction.
* free:    a file the catalog lets go of (an ended session's part, a replaced or deleted
           version) is recorded as garbage in the transaction that lets go of it, then
           unlinked; the sweep frees what a crash left in between. Nothing is ever unlinked
           because the catalog merely does not know it (recovery puts such files in
           quarantine/), except a put's own .put. file once no process holds it and it is
           PUT_GRACE old: that name says it was never acknowledged.
* scope:   a token limited to a prefix reaches a session only if the session's object id
           starts with that prefix (the `scope` argument): an upload_id alone opens nothing.
* readers: read the object row, then open objects/<disk_name> by name; a download holds its
           file descriptor, so a version replaced mid-download stays readable to it.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from node import failpoints, names, ranges
from node.cache_admission import SecondRead
from node.catalog import FileRef, ObjectRecord, SessionRecord, open_backend
from node.config import Settings
from node.errors import (DiskFull, Forbidden, GenerationMismatch, InvalidArgument,
                         InvalidPageToken, ObjectNotFound, SessionBusy, SessionNotFound,
                         TooLarge)
from node.metrics import NullSlot
from node.session_rules import (State, advise_chunk_size, check_preconditions, normalize_sha256,
                                plan_slices, transition, upload_disposition)
from node.storage import OBJECTS, PARTS, PartClaim, Storage
from node.sliced import SlicedCommit
from node.streams import DownloadReader, HashCache, UploadStream

log = logging.getLogger("mini_oss.store")

T = TypeVar("T")
SWEEP_LOCK = ".sweep.lock"
#: A one-call put's file younger than this is never removed as dead: its creator may be
#: between creating it and taking its lock (node.puts).
PUT_GRACE = 60.0
OPEN_RETRIES = 8
#: A listing page is cut to this many bytes of records as well as to page_size, so that a page
#: of objects with large metadata still fits a stock client's 4 MiB message limit.
PAGE_BYTES = 2 * 1024 * 1024
GARBAGE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class NewSession:
    """The fields of a CreateUploadSession request, as the servicer parsed them."""
    object_id: str
    file_name: str
    file_size: int
    chunk_size: int = 0
    sha256: str = ""
    content_type: str = ""
    metadata: dict | None = None
    if_absent: bool = False
    if_generation_match: str = ""
    client: str = ""
    slices: int = 0


class Store:
    def __init__(self, settings: Settings, *, clock=time.time, events=None) -> None:
        self.settings = settings
        self.clock = clock
        #: Where session events and commit times are counted (a metrics slot or forwarder).
        self.events = events or NullSlot()
        self.storage = Storage(settings.data_dir, direct_io=settings.direct_io)
        self.backend = open_backend(settings)
        self.catalogs = self.backend.pool()
        self.hashes = HashCache()
        self.reads = SecondRead()  # which downloads may fill the page cache (node.cache_admission)
        self.ttl_ms = int(settings.session_ttl * 1000)
        self._secret: bytes | None = None

    @property
    def catalog(self):
        return self.catalogs.get()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def close(self) -> None:
        self.catalogs.close()

    def page_secret(self) -> bytes:
        if self._secret is None:
            self._secret = self.catalog.page_token_secret()
        return self._secret

    # -- sessions -----------------------------------------------------------------------------

    def new_record(self, req: NewSession) -> SessionRecord:
        """Check a new upload's fields (names, size, hash) and build its ACTIVE session record,
        not yet stored: a session and a one-call put (node.puts) are checked alike."""
        object_id = names.validate_object_id(req.object_id)
        file_name = names.validate_file_name(req.file_name)
        content_type = names.validate_content_type(req.content_type)
        metadata = names.validate_metadata(req.metadata or {})
        if req.file_size < 0:
            raise InvalidArgument("file_size must be >= 0")
        if req.file_size > self.settings.max_object_size:
            raise TooLarge(f"file_size {req.file_size} exceeds the node's max object size",
                           max_object_size=self.settings.max_object_size)
        chunk_size = advise_chunk_size(req.chunk_size, self.settings.default_chunk_size,
                                       self.settings.max_chunk_size)
        sha256 = normalize_sha256(req.sha256)
        now = self.now_ms()
        return SessionRecord(
            upload_id=names.new_upload_id(), object_id=object_id, file_name=file_name,
            file_size=req.file_size, chunk_size=chunk_size, uploaded_offset=0, sha256=sha256,
            state=State.ACTIVE, content_type=content_type, metadata=metadata,
            if_absent=req.if_absent, if_generation_match=req.if_generation_match,
            client=req.client, created_at_ms=now, updated_at_ms=now, expires_at_ms=now + self.ttl_ms)

    def check_disk_reserve(self) -> None:
        free = self.storage.free_bytes()
        if free < self.settings.disk_reserve:
            raise DiskFull("free space is below the node's reserve: no new uploads for now",
                           free_bytes=free, disk_reserve=self.settings.disk_reserve)

    def create_session(self, req: NewSession) -> SessionRecord:
        rec = self.new_record(req)
        if req.if_absent or req.if_generation_match:  # (else there is nothing to check yet)
            current = self.catalog.get_object(rec.object_id)
            check_preconditions(current.generation if current else None, req.if_absent,
                                req.if_generation_match)
        self.check_disk_reserve()
        now, chunk_size = rec.created_at_ms, rec.chunk_size
        plan = plan_slices(req.file_size, req.slices, chunk_size)
        rec = rec.replace(slices=len(plan))
        slices = [rec.replace(upload_id=names.new_upload_id(), file_size=length, sha256="",
                              if_absent=False, if_generation_match="", slices=0,
                              parent_id=rec.upload_id, slice_offset=start)
                  for start, length in plan]
        self.catalog.insert_session(rec, self.settings.max_sessions,
                                    self.settings.max_sessions_per_client, slices)
        failpoints.hit("session_recorded")
        made: list[str] = []
        try:
            for member in (rec, *slices):
                self.storage.create_part(self.part_name(member))
                made.append(self.part_name(member))
        except BaseException:
            # The caller never learns these upload ids: end the sessions it cannot use.
            for member in (*slices, rec):
                part = self.part_name(member)
                self.catalog.end_session(member.upload_id, State.ABORTED, now, now + self.ttl_ms,
                                         free=[(PARTS, part)])
                self.storage.free(PARTS, part)
            raise
        return rec

    def slices_of(self, rec: SessionRecord) -> list[SessionRecord]:
        """A sliced session's slices, in object order (none for any other session)."""
        return self.catalog.slices_of(rec.upload_id) if rec.slices else []

    def get_session(self, upload_id: str, scope: str = "") -> SessionRecord:
        rec = self._lookup(upload_id, scope)
        if rec.state is State.ACTIVE and rec.expires_at_ms < self.now_ms():
            rec = self._expire(rec)
        return rec

    def abort_session(self, upload_id: str, scope: str = "") -> None:
        rec = self.get_session(upload_id, scope)
        if rec.state is State.ACTIVE and (rec.slices or rec.is_slice):
            # A sliced session is aborted whole, from any of its members: slices first, so a
            # cut-short abort leaves a parent that cannot commit, never bytes nobody owns.
            parent = rec if rec.slices else self.catalog.get_session(rec.parent_id)
            members = self.catalog.slices_of(parent.upload_id) if parent else [rec]
            self.end_family([*members, *([parent] if parent else [])], "abort", strict=True)
            return
        if rec.state is not State.ACTIVE:
            transition(rec.state, "abort")  # ABORTED: OK again; COMMITTED: SessionCommitted
            return
        claim, rec = self._claim(rec)
        if claim is None:  # it ended while we looked
            transition(rec.state, "abort")
            return
        try:
            self.end_session(rec, "abort")
        finally:
            claim.release()

    def list_sessions(self, prefix: str, page_size: int, page_token: str) -> tuple[list[SessionRecord], str]:
        rows, token = self._page(
            "sessions", prefix, page_size, page_token, key_length=2,
            fetch=lambda after, n: self.catalog.list_active_sessions(prefix, after, n),
            key_of=lambda r: (r.object_id, r.upload_id), size_of=_session_bytes)
        # Expired-but-not-yet-swept sessions are no longer ACTIVE in the contract's eyes.
        now = self.now_ms()
        return [r for r in rows if r.expires_at_ms >= now], token

    def _page(self, listing: str, prefix: str, page_size: int, page_token: str, *, key_length: int,
              fetch: Callable[[tuple[str, ...] | None, int], list[T]],
              key_of: Callable[[T], tuple[str, ...]],
              size_of: Callable[[T], int]) -> tuple[list[T], str]:
        """One page of a listing: the rows after the token's key, and the next page's token
        ("" on the last page). One row more than the page is fetched to know whether more follow.
        A page ends at `page_size` rows or at PAGE_BYTES of rows, whichever comes first.

        Only rows that start with `prefix` are ever returned: a prefix no object id can start
        with (a character outside the object-id alphabet) lists nothing.
        """
        limit = ranges.page_size(page_size)
        after = None
        if page_token:
            after = ranges.decode_page_token(self.page_secret(), listing, prefix, page_token)
            if len(after) != key_length:
                raise InvalidPageToken("page_token was not issued for this listing")
        if not names.is_object_id_prefix(prefix):
            return [], ""
        rows = fetch(after, limit + 1)
        cut = ranges.cut_page(rows, limit, PAGE_BYTES, size_of)
        if cut == len(rows):
            return rows, ""
        rows = rows[:cut]
        return rows, ranges.encode_page_token(self.page_secret(), listing, prefix, key_of(rows[-1]))

    def durable_offset(self, upload_id: str) -> int:
        """The checkpointed uploaded_offset of a session, or 0 for an id we do not know."""
        rec = self.catalog.get_session(upload_id) if names.is_upload_id(upload_id) else None
        return rec.uploaded_offset if rec is not None else 0

    def _lookup(self, upload_id: str, scope: str = "") -> SessionRecord:
        if not names.is_upload_id(upload_id):
            raise SessionNotFound(f"no upload session {upload_id!r}")
        rec = self.catalog.get_session(upload_id)
        if rec is None or (rec.state is not State.ACTIVE and rec.expires_at_ms < self.now_ms()):
            raise SessionNotFound(f"no upload session {upload_id!r}")
        if not rec.object_id.startswith(scope):
            # The durable offset is the session owner's business, not this caller's.
            raise Forbidden(f"this token is limited to object ids starting with {scope!r}",
                            prefix=scope, uploaded_offset=0)
        return rec

    def part_name(self, rec: SessionRecord) -> str:
        return names.part_file_name(rec.object_id, rec.file_name, rec.upload_id)

    def disk_name(self, rec: SessionRecord) -> str:
        return names.object_file_name(rec.object_id, rec.file_name, rec.upload_id)

    def end_session(self, rec: SessionRecord, event: str) -> SessionRecord:
        """End an ACTIVE session whose part we hold (abort, expire, failed commit); free its bytes.

        The catalog ends it first (recording the part as garbage), then the part goes: a
        claimer that finds the part gone finds the session ended, never a live session without
        its bytes."""
        state = transition(rec.state, event)
        now = self.now_ms()
        part = self.part_name(rec)
        if self.catalog.end_session(rec.upload_id, state, now, now + self.ttl_ms, free=[(PARTS, part)]):
            self.storage.free(PARTS, part)
            self.events.add("sessions_expired" if event == "expire" else "sessions_aborted")
        self.hashes.drop(rec.upload_id)
        return rec.replace(state=state, updated_at_ms=now, expires_at_ms=now + self.ttl_ms)

    def end_family(self, members: list[SessionRecord], event: str, *, held: set[str] = frozenset(),
                   strict: bool = False) -> None:
        """End each ACTIVE session of `members` (a sliced session's), in the order given,
        freeing its part. `held`: upload ids whose claims the caller holds. A member a stream
        holds is left to its stream; with `strict` that is SessionBusy once the rest ended."""
        busy: SessionBusy | None = None
        for member in members:
            if member.state is not State.ACTIVE:
                continue
            if member.upload_id in held:
                self.end_session(member, event)
                continue
            try:
                claim, fresh = self._claim(member)
            except SessionBusy as exc:
                busy = busy or exc
                continue
            if claim is None:
                continue
            try:
                self.end_session(fresh, event)
            finally:
                claim.release()
        if busy is not None and strict:
            raise busy

    def _expire(self, rec: SessionRecord) -> SessionRecord:
        """Expire an idle ACTIVE session, unless a stream holds it (then it is not idle).

        A sliced session is idle only when none of its members has moved for the TTL: until
        then each member's expiry follows the latest one's, and then they all expire."""
        if rec.slices or rec.is_slice:
            parent = rec if rec.slices else self.catalog.get_session(rec.parent_id)
            if parent is not None and parent.state is State.ACTIVE:
                members = [*self.catalog.slices_of(parent.upload_id), parent]
                latest = max(m.expires_at_ms for m in members if m.state is State.ACTIVE)
                if latest >= self.now_ms():
                    self.catalog.extend_expiry(rec.upload_id, latest)
                    return rec.replace(expires_at_ms=latest)
                for member in members:
                    if member.upload_id != rec.upload_id and member.state is State.ACTIVE:
                        self._expire_one(member)
        return self._expire_one(rec)

    def _expire_one(self, rec: SessionRecord) -> SessionRecord:
        try:
            claim, rec = self._claim(rec)
        except SessionBusy:
            # A stream holds it, so it is not idle: it cannot expire before that stream has
            # been silent for the idle timeout and the session for a whole TTL after that.
            return rec.replace(expires_at_ms=max(rec.expires_at_ms, self.now_ms() + self.ttl_ms))
        if claim is None:
            return rec
        try:
            if rec.state is State.ACTIVE and rec.expires_at_ms < self.now_ms():
                rec = self.end_session(rec, "expire")
                log.info("session %s expired", rec.upload_id)
            return rec
        finally:
            claim.release()

    def _claim(self, rec: SessionRecord) -> tuple[PartClaim | None, SessionRecord]:
        """Take the exclusive claim on an ACTIVE session's part file.

        Returns (claim, fresh record); (None, record) when the session turned out to have
        ended. Raises SessionBusy when another stream (in any process) holds it. Repairs what
        a crashed holder left: a part longer than its checkpoint is cut back; a part that a
        crashed commit had already moved into objects/ is moved back. A part shorter than its
        checkpoint lost durable bytes: that session is ended (ABORTED), never rewound.
        """
        for _ in range(OPEN_RETRIES):
            claim = self.storage.claim(self.storage.layout.part(self.part_name(rec)))
            if claim is None:
                fresh = self.catalog.get_session(rec.upload_id)
                if fresh is None or fresh.state is not State.ACTIVE:
                    return None, fresh or rec
                self._find_part(fresh)
                rec = fresh
                continue
            fresh = self.catalog.get_session(rec.upload_id)
            if fresh is None or fresh.state is not State.ACTIVE:
                claim.release()
                return None, fresh or rec
            size = claim.size()
            if size > fresh.uploaded_offset:
                claim.truncate(fresh.uploaded_offset)
            elif size < fresh.uploaded_offset:
                # Durable bytes are gone (the part was cut behind the node's back): the
                # offset never goes down under a client's feet; the session ends (API.md).
                log.error("part of %s holds %d bytes, its checkpoint %d: ending the session",
                          fresh.upload_id, size, fresh.uploaded_offset)
                try:
                    ended = self.end_session(fresh, "abort")
                finally:
                    claim.release()
                return None, ended
            return claim, fresh
        raise RuntimeError(f"could not claim session {rec.upload_id}")

    def _find_part(self, rec: SessionRecord) -> None:
        """An ACTIVE session without a part file: a commit was cut short (move it back), the
        session was created but its part not yet (create it), or the part was lost.

        `uploaded_offset` never goes down: a session whose durable bytes are gone is ended
        (ABORTED), not restarted from 0 under its client's feet.
        """
        disk_name = self.disk_name(rec)
        promoted = self.storage.claim(self.storage.layout.object(disk_name))  # SessionBusy if mid-commit
        if promoted is None:
            part = self.part_name(rec)
            if self.storage.part_exists(part):
                return  # a failed commit has just moved it back: claim it again
            if rec.uploaded_offset == 0:
                self.storage.create_part(part)
                fresh = self.catalog.get_session(rec.upload_id)
                if fresh is None or fresh.state is not State.ACTIVE:
                    self.storage.free(PARTS, part)  # it ended meanwhile: leave no part behind
                return
            log.error("session %s lost its part file holding %d durable bytes: ending it",
                      rec.upload_id, rec.uploaded_offset)
            now = self.now_ms()
            if self.catalog.end_session(rec.upload_id, State.ABORTED, now, now + self.ttl_ms):
                self.events.add("sessions_aborted")
            return
        try:
            fresh = self.catalog.get_session(rec.upload_id)
            if fresh is not None and fresh.state is State.ACTIVE:
                log.warning("session %s: moving an unfinished commit back to parts/", rec.upload_id)
                # Index first: it may already point at this file, which is about to move.
                self.repair_index(rec.object_id)
                self.storage.demote(disk_name, self.part_name(rec))
        finally:
            promoted.release()

    def record_version(self, rec: SessionRecord, obj: ObjectRecord, now: int, *,
                       slices: Sequence[tuple[str, FileRef]] = (),
                       new_session: SessionRecord | None = None) -> ObjectRecord | None:
        """The catalog step of a commit, an upload's (node.streams) and a put's (node.puts)
        alike, once `obj`'s file is durable in objects/: stage its index entry, then in one
        transaction check `rec`'s preconditions, swap the entry and write the rows. Returns
        the version it replaced, for `settle_version`. If it raises, the staged entry is gone
        and the caller undoes its file (the index may need `repair_index`)."""

        def check(current: ObjectRecord | None) -> None:
            check_preconditions(current.generation if current else None, rec.if_absent,
                                rec.if_generation_match)

        staged = ""  # the new index entry, made before the catalog's write lock is taken

        def publish(o: ObjectRecord) -> None:
            self.storage.publish_staged(o.object_id, staged)
            failpoints.hit("commit_published")

        try:
            staged = self.storage.stage_index_entry(obj.object_id, obj.disk_name)
            replaced = self.catalog.commit_object(rec.upload_id, obj, now, now + self.ttl_ms,
                                                  check, publish, slices, new_session=new_session)
        except BaseException:
            if staged:
                self.storage.discard_staged(staged)
            raise
        return replaced

    def settle_version(self, obj: ObjectRecord, replaced: ObjectRecord | None) -> None:
        """After `record_version` committed (outside the caller's undo: nothing here may move
        the committed file back): make the index entry durable, free the replaced version."""
        failpoints.hit("commit_recorded")
        self.storage.fsync_dir(self.storage.layout.index)
        if replaced is not None and replaced.disk_name != obj.disk_name:
            # Freed at once (API.md). A reader that already opened it keeps reading it.
            self.storage.free(OBJECTS, replaced.disk_name)

    def repair_index(self, object_id: str) -> bool:
        """Make index/<object_id> agree with the catalog's current version (holding the
        object's lock, so no commit on any node interleaves); True if it had to change."""
        def repair(current: ObjectRecord | None) -> bool:
            target = self.storage.index_target(object_id)
            if current is None:
                if target is not None or os.path.lexists(self.storage.layout.index_entry(object_id)):
                    self.storage.unpublish(object_id)
                    return True
            elif target != current.disk_name:
                self.storage.publish(object_id, current.disk_name)
                return True
            return False
        return self.catalog.with_object(object_id, repair)

    # -- uploads ------------------------------------------------------------------------------

    def open_upload(self, upload_id: str, scope: str = "") -> UploadStream | SlicedCommit:
        rec = self._lookup(upload_id, scope)
        if rec.state is State.ACTIVE and rec.expires_at_ms < self.now_ms():
            rec = self._expire(rec)
        if upload_disposition(rec.state) == "replay":
            return UploadStream(self, rec, None)
        if rec.slices:
            return SlicedCommit(self, rec)  # takes its claims when asked to commit
        claim, rec = self._claim(rec)
        if claim is None:
            upload_disposition(rec.state)  # ABORTED: SessionNotFound
            return UploadStream(self, rec, None)
        try:
            if rec.expires_at_ms < self.now_ms():
                self.end_session(rec, "expire")
                raise SessionNotFound(f"upload session {upload_id!r} expired")
            return UploadStream(self, rec, claim)
        except BaseException:
            claim.release()
            raise

    # -- objects ------------------------------------------------------------------------------

    def stat(self, object_id: str) -> ObjectRecord:
        names.validate_object_id(object_id)
        obj = self.catalog.get_object(object_id)
        if obj is None:
            raise ObjectNotFound(f"no object {object_id!r}")
        return obj

    def list_objects(self, prefix: str, page_size: int, page_token: str) -> tuple[list[ObjectRecord], str]:
        return self._page(
            "objects", prefix, page_size, page_token, key_length=1,
            fetch=lambda after, n: self.catalog.list_objects(prefix, after[0] if after else None, n),
            key_of=lambda o: (o.object_id,), size_of=_object_bytes)

    def delete(self, object_id: str, if_generation_match: str) -> None:
        names.validate_object_id(object_id)

        def check(current: ObjectRecord | None) -> None:
            if current is None:
                raise ObjectNotFound(f"no object {object_id!r}")
            check_preconditions(current.generation, False, if_generation_match)

        removed = self.catalog.delete_object(object_id, check,
                                             lambda obj: self.storage.unpublish(obj.object_id),
                                             self.now_ms())
        self.storage.fsync_dir(self.storage.layout.index)
        self.storage.free(OBJECTS, removed.disk_name)

    def open_download(self, object_id: str, start_offset: int, end_offset: int | None,
                      chunk_size: int, if_generation_match: str) -> DownloadReader:
        names.validate_object_id(object_id)
        size = advise_chunk_size(chunk_size, self.settings.default_chunk_size, self.settings.max_chunk_size)
        for _ in range(OPEN_RETRIES):
            obj = self.catalog.get_object(object_id)
            if obj is None:
                raise ObjectNotFound(f"no object {object_id!r}")
            if if_generation_match and obj.generation != if_generation_match:
                raise GenerationMismatch("the object changed since that generation",
                                         current_generation=obj.generation)
            start, end = ranges.resolve_range(obj.size, start_offset, end_offset)
            fd = self.storage.open_object(obj.disk_name)
            if fd is not None:
                # Around the cache (where not cached) on a range's first read; through it, so
                # that it stays cached, from its second.
                direct = self.settings.direct_io and not self.reads.seen_before(obj.disk_name, start)
                return DownloadReader(fd, obj, start, end, size, self.settings.download_readahead,
                                      direct=direct)
            # Replaced (and its file freed) between the lookup and the open: look again.
        raise RuntimeError(f"object {object_id} keeps vanishing under the reader")

    # -- housekeeping -------------------------------------------------------------------------

    def sweep(self) -> int:
        """Expire idle sessions, free recorded garbage, forget old ended sessions; one process
        at a time does it."""
        lock_path = os.path.join(self.storage.layout.root, SWEEP_LOCK)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0
            expired = 0
            for rec in self.catalog.expired_active(self.now_ms()):
                if self._expire(rec).state is State.ABORTED:
                    expired += 1
            self.free_garbage()
            self.catalog.forget_ended(self.now_ms())
            self.remove_dead_puts()
            return expired
        finally:
            os.close(fd)

    def remove_dead_puts(self) -> int:
        """Remove the files of one-call puts whose process died before the commit (unheld,
        older than PUT_GRACE, named by no row): no one was told they were stored."""
        report = collections.Counter()
        for name in self.storage.part_names():
            if names.is_put_file_name(name):
                self._check_file(PARTS, name, report)
        return report["puts_removed"]

    def free_garbage(self) -> int:
        """Unlink the files the catalog let go of that their process did not (it died first)."""
        freed = 0
        while True:
            batch = self.catalog.garbage(self.now_ms() + 1, GARBAGE_BATCH)
            for kind, name in batch:
                self.storage.free(kind, name)
            if batch:
                self.catalog.forget_garbage(batch)
            freed += len(batch)
            if len(batch) < GARBAGE_BATCH:
                return freed

    def recover(self) -> dict[str, int]:
        """Bring disk and catalog into agreement after a crash. Run before serving.

        Safe while other nodes serve the same data directory (a shared catalog):
        * a session that another stream holds is left alone (it is that stream's);
        * the directories are listed *before* the catalog is read, so a file counts as
          unknown only if no row accounted for it although it already existed (a session's
          row is written before its part; a commit renames while its session is ACTIVE);
        * each decision about one file or index entry reads that file's rows afresh, and
          index entries and lost objects are handled under the object's lock.
        """
        report = collections.Counter()
        for rec in self.catalog.sessions_in_state(State.ACTIVE):
            try:
                claim, _ = self._claim(rec)  # cuts torn tails, moves unfinished commits back
            except SessionBusy:
                report["sessions_busy"] += 1  # a live stream (another node's): not ours
                continue
            if claim is not None:
                claim.release()
                report["sessions_checked"] += 1
        part_files = self.storage.part_names()
        object_files = self.storage.object_names()
        index_names = set(self.storage.index_names())
        objects = self.catalog.all_objects()
        for obj in objects:
            if not self.storage.object_exists(obj.disk_name):
                if self._forget_lost(obj):
                    report["objects_lost"] += 1
            elif self.storage.index_target(obj.object_id) != obj.disk_name:
                report["index_repaired"] += self.repair_index(obj.object_id)
        for name in index_names - {o.object_id for o in objects}:
            if name.startswith(".tmp.") or not names.is_object_id_prefix(name):
                self.storage.remove_index_name(name)  # a swap cut short; not an object id
                report["index_removed"] += 1
            else:
                report["index_removed"] += self.repair_index(name)
        report["garbage_freed"] = self.free_garbage()
        for name in part_files:
            self._check_file(PARTS, name, report)
        current = {o.disk_name for o in objects}  # read after the listing: a superset of live
        for name in object_files:
            if name not in current:
                self._check_file(OBJECTS, name, report)
        for path in (self.storage.layout.index, self.storage.layout.parts, self.storage.layout.objects):
            self.storage.fsync_dir(path)
        report["expired"] = self.sweep()
        return dict(report)

    def _forget_lost(self, obj: ObjectRecord) -> bool:
        """Forget an object whose file is gone, if its row still names that file."""
        def forget(current: ObjectRecord | None) -> bool:
            if current is None or current.disk_name != obj.disk_name:
                return False  # replaced or deleted meanwhile: its file was freed on purpose
            if self.storage.object_exists(obj.disk_name):
                return False
            log.error("object %s lost its file %s: forgetting it", obj.object_id, obj.disk_name)
            self.catalog.drop_object_row(obj.object_id)
            self.storage.unpublish(obj.object_id)
            return True
        return self.catalog.with_object(obj.object_id, forget)

    def _check_file(self, kind: str, name: str, report: collections.Counter) -> None:
        """Keep a file a row accounts for, free one the catalog let go of, leave one a process
        holds (a one-call put at work, here or on another node), remove an unheld put's file
        (never acknowledged), and set aside the rest."""
        if self._accounted(kind, name, report):
            return
        with self.storage.unheld(kind, name) as unheld:
            if not unheld:
                report["held_files_left"] += 1
                return
            # Read again under the lock: a put holds it until its commit has ended, so a row
            # it wrote after the first read is visible now.
            if self._accounted(kind, name, report):
                return
            if kind == PARTS and names.is_put_file_name(name):
                # Its creator opens it, then locks it: a young file may be in between.
                if self.storage.age(kind, name) >= PUT_GRACE:
                    self.storage.free(kind, name)
                    report["puts_removed"] += 1
                else:
                    report["held_files_left"] += 1
                return
            self._set_aside(kind, name, report)

    def _accounted(self, kind: str, name: str, report: collections.Counter) -> bool:
        """True if a row accounts for the file: kept, or freed as the catalog let go of it.

        The session is read before the object row: a session, once COMMITTED, stays so, and
        its version stays current until replaced, so "COMMITTED and not current" is final."""
        upload_id = names.upload_id_of_disk_name(name, part=kind == PARTS)
        rec = self.catalog.get_session(upload_id) if upload_id else None
        if rec is not None and name != (self.part_name(rec) if kind == PARTS else self.disk_name(rec)):
            rec = None  # an upload id inside a name that is not that session's
        if rec is None:
            return False
        if rec.state is State.ACTIVE:
            return True  # in flight (here or on another node), or mid-commit
        if kind == OBJECTS and rec.state is State.COMMITTED:
            current = self.catalog.get_object(rec.object_id)
            if current is not None and current.disk_name == name:
                return True  # the current version
        self.storage.free(kind, name)  # an ended session's part, a replaced version
        report[f"freed_{kind}"] += 1
        return True

    def _set_aside(self, kind: str, name: str, report: collections.Counter) -> None:
        """A file no catalog row accounts for: an empty part (a create cut short by an older
        version) is removed; anything holding bytes goes to quarantine/ for an operator."""
        path = os.path.join(self.storage.layout.root, kind, name)
        try:
            empty = kind == PARTS and os.lstat(path).st_size == 0
        except FileNotFoundError:
            return
        if empty:
            self.storage.free(kind, name)
            report["empty_parts_removed"] += 1
            return
        target = self.storage.quarantine(kind, name)
        log.warning("%s/%s is unknown to the catalog: moved to %s", kind, name, target)
        report[f"quarantined_{kind}"] += 1


def prepare_data_dir(settings: Settings) -> dict[str, int]:
    """Check the catalog is this data directory's own, create the layout, and repair what a
    crash left. Raises `node.datadir.DataDirError` (one line, with the repair command) for a
    catalog that is missing, empty, damaged or another directory's while objects live here.

    Run once, alone (holding the data directory's lock), before any worker serves.
    """
    from node.datadir import check_catalog

    os.makedirs(settings.data_dir, exist_ok=True)
    check_catalog(settings.data_dir, open_backend(settings), log)
    store = Store(settings)
    try:
        report = store.recover()
        register = getattr(store.catalog, "register_node", None)
        if register is not None and settings.node_name:  # a shared catalog knows its nodes
            register(settings.node_name, socket.gethostname(), os.getpid(), store.now_ms())
        return report
    finally:
        store.close()


def _object_bytes(obj: ObjectRecord) -> int:
    """An upper bound of the record's size as an ObjectInfo on the wire."""
    metadata = sum(len(k.encode()) + len(v.encode()) + 16 for k, v in obj.metadata.items())
    return (len(obj.object_id) + len(obj.file_name.encode()) + len(obj.sha256)
            + len(obj.content_type.encode()) + len(obj.generation) + metadata + 64)


def _session_bytes(rec: SessionRecord) -> int:
    """An upper bound of the record's size as an UploadSession on the wire."""
    return (len(rec.upload_id) + len(rec.object_id) + len(rec.file_name.encode())
            + len(rec.sha256) + 64)
