"""The node's logic: what happens to sessions and objects, in what order.

Three layers (STYLE.md): the servicer parses requests and maps errors; this module decides;
`storage` and `catalog` store. Every method here is blocking and is run by the servicer in the
worker's thread pool; nothing here knows about gRPC.

Ordering rules that keep objects whole across crashes of any process:

* create:  part file first, then the session row (a crash in between leaves an orphan part
           that recovery removes).
* write:   pwrite, hash; nothing else per chunk. A checkpoint is fdatasync, then one catalog
           write of `uploaded_offset`: the catalog never claims bytes the disk may not have.
* commit:  fsync + rename into objects/ + fsync objects/ (outside the catalog lock); then one
           write transaction checks the preconditions, swaps index/<object_id> and records the
           object and the session as COMMITTED; then the replaced version's file is unlinked.
           A crash before the transaction leaves the file in objects/ with an ACTIVE session:
           the next claim (or recovery) moves it back to parts/ and the upload can finish.
* readers: read the object row, then open objects/<disk_name> by name; a download holds its
           file descriptor, so a version replaced mid-download stays readable to it.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from node import names, ranges
from node.catalog import Catalog, CatalogPool, ObjectRecord, SessionRecord
from node.config import Settings
from node.errors import (DiskFull, GenerationMismatch, InvalidArgument, InvalidPageToken,
                         ObjectNotFound, OssError, SessionNotFound, TooLarge)
from node.metrics import NullSlot
from node.session_rules import (State, advise_chunk_size, check_preconditions, normalize_sha256,
                                transition, upload_disposition)
from node.storage import PartClaim, Storage
from node.streams import DownloadReader, HashCache, UploadStream

log = logging.getLogger("mini_oss.store")

T = TypeVar("T")
SWEEP_LOCK = ".sweep.lock"
OPEN_RETRIES = 8


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


class Store:
    def __init__(self, settings: Settings, *, clock=time.time, events=None) -> None:
        self.settings = settings
        self.clock = clock
        #: Where session events and commit times are counted (a metrics slot or forwarder).
        self.events = events or NullSlot()
        self.storage = Storage(settings.data_dir, direct_io=settings.direct_io)
        self.catalogs = CatalogPool(settings.data_dir)
        self.hashes = HashCache()
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

    def create_session(self, req: NewSession) -> SessionRecord:
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
        current = self.catalog.get_object(object_id)
        check_preconditions(current.generation if current else None, req.if_absent,
                            req.if_generation_match)
        free = self.storage.free_bytes()
        if free < self.settings.disk_reserve:
            raise DiskFull("free space is below the node's reserve: no new uploads for now",
                           free_bytes=free, disk_reserve=self.settings.disk_reserve)
        now = self.now_ms()
        rec = SessionRecord(
            upload_id=names.new_upload_id(), object_id=object_id, file_name=file_name,
            file_size=req.file_size, chunk_size=chunk_size, uploaded_offset=0, sha256=sha256,
            state=State.ACTIVE, content_type=content_type, metadata=metadata,
            if_absent=req.if_absent, if_generation_match=req.if_generation_match,
            client=req.client, created_at_ms=now, updated_at_ms=now, expires_at_ms=now + self.ttl_ms)
        self.storage.create_part(self.part_name(rec))
        try:
            self.catalog.insert_session(rec, self.settings.max_sessions, self.settings.max_sessions_per_client)
        except BaseException:
            self.storage.remove_part(self.part_name(rec))
            raise
        return rec

    def get_session(self, upload_id: str) -> SessionRecord:
        rec = self._lookup(upload_id)
        if rec.state is State.ACTIVE and rec.expires_at_ms < self.now_ms():
            rec = self._expire(rec)
        return rec

    def abort_session(self, upload_id: str) -> None:
        rec = self.get_session(upload_id)
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
            key_of=lambda r: (r.object_id, r.upload_id))
        # Expired-but-not-yet-swept sessions are no longer ACTIVE in the contract's eyes.
        now = self.now_ms()
        return [r for r in rows if r.expires_at_ms >= now], token

    def _page(self, listing: str, prefix: str, page_size: int, page_token: str, *, key_length: int,
              fetch: Callable[[tuple[str, ...] | None, int], list[T]],
              key_of: Callable[[T], tuple[str, ...]]) -> tuple[list[T], str]:
        """One page of a listing: the rows after the token's key, and the next page's token
        ("" on the last page). One row more than the page is fetched to know whether more follow."""
        limit = ranges.page_size(page_size)
        after = None
        if page_token:
            after = ranges.decode_page_token(self.page_secret(), listing, prefix, page_token)
            if len(after) != key_length:
                raise InvalidPageToken("page_token was not issued for this listing")
        rows = fetch(after, limit + 1)
        if len(rows) <= limit:
            return rows, ""
        rows = rows[:limit]
        return rows, ranges.encode_page_token(self.page_secret(), listing, prefix, key_of(rows[-1]))

    def durable_offset(self, upload_id: str) -> int:
        """The checkpointed uploaded_offset of a session, or 0 for an id we do not know."""
        rec = self.catalog.get_session(upload_id) if names.is_upload_id(upload_id) else None
        return rec.uploaded_offset if rec is not None else 0

    def _lookup(self, upload_id: str) -> SessionRecord:
        if not names.is_upload_id(upload_id):
            raise SessionNotFound(f"no upload session {upload_id!r}")
        rec = self.catalog.get_session(upload_id)
        if rec is None or (rec.state is not State.ACTIVE and rec.expires_at_ms < self.now_ms()):
            raise SessionNotFound(f"no upload session {upload_id!r}")
        return rec

    def part_name(self, rec: SessionRecord) -> str:
        return names.part_file_name(rec.object_id, rec.file_name, rec.upload_id)

    def disk_name(self, rec: SessionRecord) -> str:
        return names.object_file_name(rec.object_id, rec.file_name, rec.upload_id)

    def end_session(self, rec: SessionRecord, event: str) -> SessionRecord:
        """End an ACTIVE session whose part we hold (abort, expire, failed commit); free its bytes."""
        state = transition(rec.state, event)
        now = self.now_ms()
        self.catalog.end_session(rec.upload_id, state, now, now + self.ttl_ms)
        self.storage.remove_part(self.part_name(rec))
        self.hashes.drop(rec.upload_id)
        self.events.add("sessions_expired" if event == "expire" else "sessions_aborted")
        return rec.replace(state=state, updated_at_ms=now, expires_at_ms=now + self.ttl_ms)

    def _expire(self, rec: SessionRecord) -> SessionRecord:
        """Expire an idle ACTIVE session, unless a stream holds it (then it is not idle)."""
        try:
            claim, rec = self._claim(rec)
        except OssError:  # busy: somebody is writing to it
            return rec
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
        crashed commit had already moved into objects/ is moved back.
        """
        for _ in range(OPEN_RETRIES):
            claim = self.storage.claim(self.storage.layout.part(self.part_name(rec)))
            if claim is None:
                fresh = self.catalog.get_session(rec.upload_id)
                if fresh is None or fresh.state is not State.ACTIVE:
                    return None, fresh or rec
                self._reclaim_promoted(fresh)
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
                log.error("part of %s holds %d bytes, checkpoint says %d: resuming from %d",
                          fresh.upload_id, size, fresh.uploaded_offset, size)
                self.catalog.reset_session_offset(fresh.upload_id, size)
                fresh = fresh.replace(uploaded_offset=size)
            return claim, fresh
        raise RuntimeError(f"could not claim session {rec.upload_id}")

    def _reclaim_promoted(self, rec: SessionRecord) -> None:
        """An ACTIVE session without a part file: a commit was cut short, or the part was lost."""
        disk_name = self.disk_name(rec)
        promoted = self.storage.claim(self.storage.layout.object(disk_name))  # SessionBusy if mid-commit
        if promoted is None:
            log.error("session %s lost its part file: restarting it from 0", rec.upload_id)
            self.storage.create_part(self.part_name(rec))
            self.catalog.reset_session_offset(rec.upload_id, 0)
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

    def repair_index(self, object_id: str) -> None:
        """Make index/<object_id> agree with the catalog's current version."""
        current = self.catalog.get_object(object_id)
        target = self.storage.index_target(object_id)
        if current is None:
            if target is not None or os.path.lexists(self.storage.layout.index_entry(object_id)):
                self.storage.unpublish(object_id)
        elif target != current.disk_name:
            self.storage.publish(object_id, current.disk_name)

    # -- uploads ------------------------------------------------------------------------------

    def open_upload(self, upload_id: str) -> UploadStream:
        rec = self._lookup(upload_id)
        if rec.state is State.ACTIVE and rec.expires_at_ms < self.now_ms():
            rec = self._expire(rec)
        if upload_disposition(rec.state) == "replay":
            return UploadStream(self, rec, None)
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
            key_of=lambda o: (o.object_id,))

    def delete(self, object_id: str, if_generation_match: str) -> None:
        names.validate_object_id(object_id)

        def check(current: ObjectRecord | None) -> None:
            if current is None:
                raise ObjectNotFound(f"no object {object_id!r}")
            check_preconditions(current.generation, False, if_generation_match)

        removed = self.catalog.delete_object(object_id, check,
                                             lambda obj: self.storage.unpublish(obj.object_id))
        self.storage.fsync_dir(self.storage.layout.index)
        self.storage.remove_object(removed.disk_name)

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
                return DownloadReader(fd, obj, start, end, size, self.settings.download_readahead)
            # Replaced (and its file freed) between the lookup and the open: look again.
        raise RuntimeError(f"object {object_id} keeps vanishing under the reader")

    # -- housekeeping -------------------------------------------------------------------------

    def sweep(self) -> int:
        """Expire idle sessions and forget old ended ones; one process at a time does it."""
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
            self.catalog.forget_ended(self.now_ms())
            return expired
        finally:
            os.close(fd)

    def recover(self) -> dict[str, int]:
        """Bring disk and catalog into agreement after a crash. Run before serving, alone."""
        report = collections.Counter()
        active = self.catalog.sessions_in_state(State.ACTIVE)
        for rec in active:
            claim, _ = self._claim(rec)  # cuts torn tails, moves unfinished commits back
            if claim is not None:
                claim.release()
                report["sessions_checked"] += 1
        active = self.catalog.sessions_in_state(State.ACTIVE)
        objects = self.catalog.all_objects()
        for obj in objects:
            if not self.storage.object_exists(obj.disk_name):
                log.error("object %s lost its file %s: forgetting it", obj.object_id, obj.disk_name)
                self.catalog.drop_object_row(obj.object_id)
                self.storage.unpublish(obj.object_id)
                report["objects_lost"] += 1
            elif self.storage.index_target(obj.object_id) != obj.disk_name:
                self.storage.publish(obj.object_id, obj.disk_name)
                report["index_repaired"] += 1
        known_objects = {o.object_id for o in objects}
        for name in self.storage.index_names():
            if name not in known_objects:
                self.storage.remove_index_name(name)
                report["index_removed"] += 1
        live_parts = {self.part_name(r) for r in active}
        for name in self.storage.part_names():
            if name not in live_parts:
                self.storage.remove_part(name)
                report["orphan_parts"] += 1
        live_objects = {o.disk_name for o in self.catalog.all_objects()}
        for name in self.storage.object_names():
            if name not in live_objects:
                self.storage.remove_object(name)
                report["orphan_objects"] += 1
        for path in (self.storage.layout.index, self.storage.layout.parts, self.storage.layout.objects):
            self.storage.fsync_dir(path)
        report["expired"] = self.sweep()
        return dict(report)


def prepare_data_dir(settings: Settings) -> dict[str, int]:
    """Create the layout and the catalog, and repair what a crash left.

    Run once, alone, before any worker serves (the supervisor does it).
    """
    store = Store(settings)
    try:
        Catalog.prepare(settings.data_dir)
        return store.recover()
    finally:
        store.close()
