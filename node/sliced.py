"""Sliced sessions: one object uploaded over several streams at once (API.md, "Sliced sessions").

Why slices are sessions of their own: each one then keeps every promise a plain session keeps
(its own claim, CRC checks, durable checkpoints, resume point, expiry) with the code that
already keeps them; only the commit is new. A sliced session is a parent session (the object's
size, SHA-256, name, metadata and preconditions) with N slice sessions, each covering one
contiguous range of the object and writing its own part file.

The commit (an empty chunk at offset `file_size` on the parent's Upload stream) holds the
parent's claim and every slice's claim, copies the slices in object order into the parent's
part while hashing them, and then commits the parent like any session: fsync, rename into
objects/, and one catalog transaction that records the object and marks the parent and every
slice COMMITTED (their parts becoming garbage). Crash safety comes from the old rules: until
that transaction, the parent's checkpoint is 0, so a claim after a crash cuts its part back to
nothing and the commit can simply run again; the slices are untouched until the transaction.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import logging
import os
from typing import TYPE_CHECKING

from node import failpoints
from node.catalog import ObjectRecord, SessionRecord
from node.errors import (DiskFull, GenerationMismatch, InvalidArgument, ObjectExists, PastEnd,
                         SessionNotFound, Sha256Mismatch, SlicesIncomplete)
from node.session_rules import State, merge_expected_sha256, upload_disposition
from node.storage import PARTS, PartClaim
from node.streams import UploadStream

if TYPE_CHECKING:
    from node.store import Store

log = logging.getLogger("mini_oss.sliced")
COPY_BLOCK = 8 * 1024 * 1024
#: Block reads kept in flight ahead of the hashing (READ_AHEAD * COPY_BLOCK bytes of memory).
READ_AHEAD = 4


class SlicedCommit:
    """What an Upload stream on a sliced (parent) session holds: no bytes, only the request to
    commit. The same interface as `UploadStream` for the servicer."""

    def __init__(self, store: Store, rec: SessionRecord) -> None:
        self.store = store
        self.rec = rec
        self.sha256 = rec.sha256
        self.durable_offset = rec.uploaded_offset
        self._asked = False

    @property
    def upload_id(self) -> str:
        return self.rec.upload_id

    def accept(self, offset: int, data, crc32: int | None, crc32c: int | None, sha256: str) -> None:
        if len(data):
            raise InvalidArgument("a sliced session takes its bytes through its slices "
                                  "(UploadSession.slices); send an empty chunk at offset "
                                  "file_size to commit it", field="data")
        if offset > self.rec.file_size:
            raise PastEnd(f"offset {offset} is past the end of the object ({self.rec.file_size} "
                          f"bytes)", file_size=self.rec.file_size, offset=offset, length=0)
        self.sha256 = merge_expected_sha256(self.sha256, sha256)
        self._asked = self._asked or offset == self.rec.file_size

    def finish(self) -> tuple[SessionRecord, ObjectRecord | None]:
        if not self._asked:  # only asked where it stands
            return self.store.get_session(self.rec.upload_id), None
        rec, obj = commit_sliced(self.store, self.rec, self.sha256)
        self.durable_offset = rec.uploaded_offset
        return rec, obj

    def close(self) -> None:
        pass


def commit_sliced(store: Store, parent: SessionRecord,
                  sha256: str) -> tuple[SessionRecord, ObjectRecord | None]:
    """Compose the slices into the object and commit it; see the module doc."""
    claim, parent = store._claim(parent)  # SessionBusy while another commit of it runs
    if claim is None:  # it ended while we looked: a commit that won, or an abort
        upload_disposition(parent.state)
        return parent, parent.object
    held: list[PartClaim] = [claim]
    held_ids = {parent.upload_id}
    try:
        slices = _complete_slices(store, parent)
        for rec in slices:
            slice_claim, _ = store._claim(rec)  # SessionBusy while its stream is open
            if slice_claim is None:
                raise _broken(store, parent, f"slice {rec.upload_id} ended", held_ids)
            held.append(slice_claim)
            held_ids.add(rec.upload_id)
        free = store.storage.free_bytes()
        if free < parent.file_size + store.settings.disk_reserve:
            raise DiskFull("not enough free space to compose the object from its slices",
                           free_bytes=free, needed=parent.file_size)
        hasher = _copy_slices([(c, rec.slice_offset, rec.file_size)
                               for rec, c in zip(slices, held[1:])], claim)
        failpoints.hit("slices_copied")
        stream = UploadStream(store, parent, claim)
        stream._hasher = hasher
        stream.offset = parent.file_size
        stream.sha256 = sha256
        held.remove(claim)  # the stream releases it from here on
        try:
            stream._commit(slices)
        except (Sha256Mismatch, ObjectExists, GenerationMismatch):
            # The parent ended (its commit failed for good): so do its slices.
            store.end_family(slices, "fail_commit", held=held_ids)
            raise
        finally:
            if stream.claim is not None:
                stream.claim.release()
        for rec in slices:
            store.storage.free(PARTS, store.part_name(rec))
        return stream.rec, stream.committed
    finally:
        for c in held:
            c.release()


def _complete_slices(store: Store, parent: SessionRecord) -> list[SessionRecord]:
    """The parent's slices, each ACTIVE with every byte durable; else the error to answer."""
    slices = store.catalog.slices_of(parent.upload_id)
    ended = [s for s in slices if s.state is not State.ACTIVE]
    if len(slices) != parent.slices or ended:
        raise _broken(store, parent, f"{len(ended) or parent.slices - len(slices)} of its "
                                     f"{parent.slices} slices ended", {parent.upload_id})
    for s in slices:
        if s.uploaded_offset < s.file_size:
            raise SlicesIncomplete(
                f"slice {s.upload_id} (bytes {s.slice_offset}..{s.slice_offset + s.file_size}) "
                f"holds {s.uploaded_offset} of its {s.file_size} bytes",
                slice_upload_id=s.upload_id, uploaded_offset=0,
                slice_uploaded_offset=s.uploaded_offset)
    return slices


def _broken(store: Store, parent: SessionRecord, why: str, held: set[str]) -> SessionNotFound:
    """A sliced session that lost a slice (aborted, expired) can never commit: end it all
    (`held`: the sessions whose claims the caller holds)."""
    store.end_family([*store.catalog.slices_of(parent.upload_id), parent], "abort", held=held)
    return SessionNotFound(f"upload session {parent.upload_id} can no longer commit: {why}")


def _copy_slices(sources: list[tuple[PartClaim, int, int]], target: PartClaim):
    """Copy each (slice part, object offset, length) into `target`, in object order, and
    return the SHA-256 of the whole.

    The slices' bytes were written with O_DIRECT, so they are read from the disk: READ_AHEAD
    block reads are kept in flight at once (one sequential reader gets a third of what a few
    concurrent ones get here), the hashing takes them in order, and each block's write
    overlaps the next block's hashing. Reads, hashing and writes all run outside the GIL."""
    blocks = ((source, done, at + done, min(COPY_BLOCK, length - done))
              for source, at, length in sources for done in range(0, length, COPY_BLOCK))
    hasher = hashlib.sha256()
    with concurrent.futures.ThreadPoolExecutor(READ_AHEAD + 1, "mini-oss-compose") as pool:
        reads: collections.deque = collections.deque()
        writing: concurrent.futures.Future | None = None

        def read_next() -> None:
            block = next(blocks, None)
            if block is not None:
                reads.append((block[2], pool.submit(_read_block, *block[:2], block[3])))
        try:
            for _ in range(READ_AHEAD):
                read_next()
            while reads:
                at, reading = reads.popleft()
                data = reading.result()
                read_next()
                hasher.update(data)
                if writing is not None:
                    writing.result()
                writing = pool.submit(target.write, at, data)
            if writing is not None:
                writing.result()
        finally:
            for _, reading in reads:
                reading.cancel()
    return hasher


def _read_block(source: PartClaim, offset: int, length: int) -> bytes:
    data = os.pread(source.fd, length, offset)
    if len(data) != length:
        raise OSError(f"slice part {source.path} is shorter than its checkpoint")
    return data
