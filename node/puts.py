"""The one-call put (API.md "One-call put"): a whole small object in one message.

Why a path of its own rather than a session created and committed inside one call: a session
costs a catalog transaction to create it and a row that lives ACTIVE in between, which buys
resumability that an object of one message does not need. A put writes its file, then runs
the same commit as a session (node.streams: fsync + rename into objects/ + fsync objects/,
then one write transaction that checks the preconditions, swaps the index entry and records
the object) with the session's row born COMMITTED in that same transaction, so the version's
generation is an upload id like any other and `GetUploadSession`/`Upload` of it replay.

Crash safety without a row in flight: the file is created as parts/<...>.put.<upload_id> and
its `flock` is held from creation until the commit has ended. Recovery (store.recover, at start
or on another node sharing the directory) and the sweep leave a held file alone; an unheld
`.put.` file that no row names was never acknowledged, and is removed once it is PUT_GRACE old
(its creator opens it before it can lock it). A put cut short between its rename into
objects/ and its transaction leaves an object file no row names, which recovery puts in
quarantine/ as it does any such file (the window is one transaction long).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time

from node import failpoints, names
from node.catalog import ObjectRecord
from node.errors import GenerationMismatch, ObjectExists, Sha256Mismatch
from node.session_rules import State
from node.storage import OBJECTS, PARTS, PartClaim
from node.store import NewSession, Store
from node.streams import verify_chunk

log = logging.getLogger("mini_oss.puts")


def put_object(store: Store, fields: NewSession, data: bytes, crc32: int | None,
               crc32c: int | None) -> ObjectRecord:
    """Check, store and commit one whole object (`fields` as a session's would be, with
    file_size = len(data)); its record once it is durable and current. Blocking: the servicer
    runs it in the worker's pool."""
    size = len(data)
    rec = store.new_record(fields)
    verify_chunk(data, crc32, crc32c, store.settings.max_chunk_size)
    digest = hashlib.sha256(data).hexdigest()
    if rec.sha256 and digest != rec.sha256:
        raise Sha256Mismatch("the object's SHA-256 does not match the expected hash",
                             expected=rec.sha256, actual=digest)
    store.check_disk_reserve()

    started = time.monotonic()
    disk_name = store.disk_name(rec)
    claim = store.storage.create_put(names.part_file_name(rec.object_id, rec.file_name,
                                                          rec.upload_id, put=True))
    recording = False
    try:
        claim.write(0, data)
        failpoints.hit("put_written")
        store.storage.promote(claim, disk_name)
        failpoints.hit("commit_renamed")
        now = store.now_ms()
        obj = ObjectRecord(object_id=rec.object_id, generation=rec.upload_id,
                           file_name=rec.file_name, size=size, sha256=digest,
                           content_type=rec.content_type, metadata=rec.metadata,
                           created_at_ms=now, disk_name=disk_name)
        row = rec.replace(state=State.COMMITTED, uploaded_offset=size,
                          updated_at_ms=now, expires_at_ms=now + store.ttl_ms, object=obj)
        recording = True
        replaced = store.record_version(rec, obj, now, new_session=row)
    except BaseException as exc:
        _undo(store, claim, rec.object_id, disk_name,
              published=recording and not isinstance(exc, (ObjectExists, GenerationMismatch)),
              outcome_known=not getattr(exc, "maybe_done", False))
        raise
    store.settle_version(obj, replaced)
    claim.release()
    store.events.add("objects_committed")
    store.events.observe("commit_seconds", time.monotonic() - started)
    return obj


def _undo(store: Store, claim: PartClaim, object_id: str, disk_name: str, *,
          published: bool, outcome_known: bool) -> None:
    """Nothing was committed: the file goes, wherever it got to, and then its lock. A
    transaction that rolled back after `publish` may have left the index entry on this
    version: it is put back first (readers go by the catalog; the index follows it;
    `record_version` already dropped its staged entry).

    When the catalog's database went away inside the transaction (CatalogUnavailable.maybe_done)
    the commit may have happened, so a file already in objects/ is kept: recovery keeps it if a
    row names it, else sets it aside. One that failed before the transaction began is freed."""
    try:
        if published:
            store.repair_index(object_id)
    except Exception:
        log.exception("could not restore the index after a failed put of %s", disk_name)
    finally:
        promoted = claim.path == store.storage.layout.object(disk_name)
        if not promoted or outcome_known:
            store.storage.free(OBJECTS if promoted else PARTS, os.path.basename(claim.path))
        claim.release()
