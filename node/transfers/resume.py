"""`put` and `get` that resume when run again, for the command line.

Why: the library resumes within one process; a person re-runs the command. These two functions
put a `node.transfers.transfer_state` entry around a `Client` transfer: written before the first byte
moves, dropped once the transfer is done or cannot be resumed, left in place by anything that
can be resumed (Ctrl-C, kill -9, a lost connection, a node restart).

put: a fresh upload hashes the whole file first and sends that SHA-256 at session creation, so
the session only ever commits this file's bytes; a re-run resumes from the node's
`uploaded_offset` only if the file's identity (size, mtime_ns, ctime_ns, inode, device) is
unchanged and the session is still ACTIVE. A changed file aborts its old session (freeing its
bytes) and uploads afresh; an expired or aborted session is forgotten; a committed one whose
version is still current means the file is stored (nothing is sent), one since replaced is
forgotten. Each such decision is one line through `notify`.

get: the bytes go to `<target>.mini-oss-partial`, pinned to one generation. A re-run re-hashes
the kept prefix, asks only for the rest with `if_generation_match`, checks the whole SHA-256
and only then renames the file into place; if the object changed, it starts over.

get over several streams (`parallel`, node.transfers.parallel_download): the partial file is made at
full size and each range is written where it belongs; the entry carries each range's progress,
saved as the ranges move (node.transfers.parallel_plan.Tally.checkpoint) and when the run stops. A re-run
with the same pin asks only for each range's rest; the whole file is read back and its SHA-256
checked once every range is done, which also catches kept bytes changed in between. An entry a
one-stream run left is continued too: its prefix becomes one finished range.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable

from node import errors
from node.client import ACTIVE, COMMITTED, Client, ObjectInfo, Progress, _place_new, resumable
from node.errors import OssError
from node.transfers.parallel_download import check_sha256, fetch, file_sha256
from node.transfers.parallel_plan import Tally, after_prefix, auto_streams, split, valid
from node.pb import oss_pb2
from node.transfers.progress import human_size
from node.transfers.transfer_state import (DOWNLOAD, RERUN_RESUMES, UPLOAD, DownloadEntry, FileIdentity, StateStore,
                                 UploadEntry, change_reason, partial_path,
                                 remove_if_present)

Notify = Callable[[str], Any]
_BLOCK = 1024 * 1024


class TransferInterrupted(KeyboardInterrupt):
    """Ctrl-C during a transfer; `hint` says where it stopped and how to continue."""

    def __init__(self, hint: str) -> None:
        super().__init__(hint)
        self.hint = hint


class FileChanged(ValueError):
    """The file changed while it was being hashed: there is no one version to upload."""


# --------------------------------------------------------------------------------------------
# put


def put(client: Client, store: StateStore, path: str, object_id: str, *, node: str,
        fresh: bool = False, notify: Notify = print, progress: Progress | None = None,
        parallel: int = 1, **create: Any) -> ObjectInfo:
    """Upload the file at `path` as `object_id`, resuming an earlier run's session if it can.

    `create` holds CreateUploadSession's other fields (file_name, content_type, metadata,
    if_absent, if_generation_match, chunk_size). `fresh` (--no-resume) aborts an old session.
    `parallel` > 1 makes a new session a sliced one (that many streams); a resumed session
    keeps the shape it was made with.
    """
    path = os.path.abspath(path)
    with open(path, "rb") as f:
        identity = FileIdentity.of(os.fstat(f.fileno()))
        entry = store.load(UPLOAD, node, object_id, path)
        session = None
        if isinstance(entry, UploadEntry):
            session = _session_to_resume(client, entry, identity, fresh, notify)
            if session is None:
                store.drop(UPLOAD, node, object_id, path)
        if session is None and client.takes_one_call(
                identity.size, parallel=parallel, if_absent=create.get("if_absent", False),
                if_generation_match=create.get("if_generation_match", "")):
            # Nothing worth resuming: no session and no state entry.
            info = _put_in_one_call(client, f, path, identity, object_id, create)
            if info is not None:  # (None: this node takes no such put; a session does it)
                if progress:
                    progress(identity.size, identity.size)
                return info
        if session is None:
            sha256 = _sha256_of(f)
            if FileIdentity.of(os.stat(path)) != identity:
                raise FileChanged(f"{path!r} changed while it was being read: not uploading it")
            session = client.create_session(object_id, create.pop("file_name", "") or object_id,
                                            identity.size, sha256=sha256,
                                            slices=parallel if parallel > 1 else 0, **create)
            store.save(UploadEntry(node=node, object_id=object_id, path=path,
                                   upload_id=session.upload_id, sha256=sha256, file=identity))
        elif session.state == ACTIVE and bytes_done(session):
            notify(f"resuming {object_id} at {human_size(bytes_done(session))} of "
                   f"{human_size(identity.size)}")
        done = [bytes_done(session)]

        def track(sent: int, total: int) -> None:
            done[0] = sent
            if progress:
                progress(sent, total)

        f.seek(0)
        try:
            info = client.upload(f, object_id, upload_id=session.upload_id, size=identity.size,
                                 progress=track)
        except KeyboardInterrupt:
            raise TransferInterrupted(
                f"at {human_size(done[0])} of {human_size(identity.size)}; run the same command "
                f"again to resume (upload {session.upload_id})") from None
        except OssError as err:
            if resumable(err):
                err.metadata[RERUN_RESUMES] = "1"
            else:  # the session cannot go on (e.g. SHA256_MISMATCH aborted it)
                store.drop(UPLOAD, node, object_id, path)
            raise
    store.drop(UPLOAD, node, object_id, path)
    return info


def _put_in_one_call(client: Client, f, path: str, identity: FileIdentity, object_id: str,
                     create: dict) -> ObjectInfo | None:
    data = f.read(identity.size + 1)
    if len(data) != identity.size or FileIdentity.of(os.stat(path)) != identity:
        raise FileChanged(f"{path!r} changed while it was being read: not uploading it")
    return client.put_small(object_id, data, file_name=create.get("file_name", "") or object_id,
                            content_type=create.get("content_type", ""),
                            metadata=create.get("metadata"))


def bytes_done(session: oss_pb2.UploadSession) -> int:
    """How many of the object's bytes the node holds durably (a sliced session: its slices')."""
    return session.uploaded_offset + sum(s.uploaded_offset for s in session.slices)


def _session_to_resume(client: Client, entry: UploadEntry, identity: FileIdentity, fresh: bool,
                       notify: Notify) -> oss_pb2.UploadSession | None:
    """The earlier run's ACTIVE session if this file may continue it; else None, having said
    why (and aborted the old session where it still holds bytes)."""
    upload_id = entry.upload_id
    if fresh:
        _abort_quietly(client, upload_id)
        notify(f"--no-resume: aborted upload {upload_id} of {entry.object_id}, starting afresh")
        return None
    reason = change_reason(entry.file, identity)
    if reason:
        _abort_quietly(client, upload_id)
        notify(f"{entry.path} changed since upload {upload_id} began ({reason}): aborted that "
               f"session, uploading afresh")
        return None
    try:
        session = client.get_session(upload_id)
    except errors.SessionNotFound:
        notify(f"upload {upload_id} of {entry.object_id} expired and the node forgot it: "
               f"uploading afresh")
        return None
    if session.state == COMMITTED:
        # The earlier run got as far as the commit (it died before forgetting its entry). If
        # that version is still the current one, the file is stored: nothing to send.
        try:
            current = client.stat(entry.object_id).generation
        except errors.ObjectNotFound:
            current = ""
        if current == upload_id:
            notify(f"upload {upload_id} had already committed {entry.object_id}: nothing to send")
            return session
        notify(f"upload {upload_id} had committed {entry.object_id}, which has changed since: "
               f"uploading afresh")
        return None
    if session.state != ACTIVE:
        notify(f"upload {upload_id} of {entry.object_id} was aborted or expired on the node: "
               f"uploading afresh")
        return None
    if session.file_size != identity.size or session.sha256.lower() != entry.sha256.lower():
        _abort_quietly(client, upload_id)
        notify(f"upload {upload_id} was made for other bytes than {entry.path}: aborted it, "
               f"uploading afresh")
        return None
    return session


def _abort_quietly(client: Client, upload_id: str) -> None:
    """Abort a session we are leaving behind; one already ended needs nothing."""
    try:
        client.abort_session(upload_id)
    except (errors.SessionNotFound, errors.SessionCommitted):
        pass


def _sha256_of(f) -> str:
    f.seek(0)
    hasher = hashlib.sha256()
    while block := f.read(_BLOCK):
        hasher.update(block)
    return hasher.hexdigest()


# --------------------------------------------------------------------------------------------
# get


def get(client: Client, store: StateStore, object_id: str, target: str, *, node: str,
        overwrite: bool = True, generation: str = "", fresh: bool = False,
        notify: Notify = print, progress: Progress | None = None,
        parallel: int | None = 1) -> ObjectInfo:
    """Download the whole object to `target` through `<target>.mini-oss-partial`, resuming an
    earlier run's partial file when it still belongs to the object's current version.

    `generation` pins the version (the caller's stat, when it took the file name from it).
    `parallel`: streams at once; None = by the object's size and the node's workers
    (`parallel_plan.auto_streams`). An entry a parallel run left goes on range by range,
    whatever `parallel` is now (with 1, one range at a time).
    """
    target = os.path.abspath(target)
    partial = partial_path(target)
    entry = store.load(DOWNLOAD, node, object_id, target)
    ranged = isinstance(entry, DownloadEntry) and bool(entry.ranges)
    if parallel != 1 or ranged:
        info = client.stat(object_id)  # its size decides the streams; it pins the version
        streams = parallel or auto_streams(info.size, lambda: client.node_info().workers)
        if streams > 1 or ranged:
            client.open_channels(streams)  # a connection per stream: several workers serve it
            return _get_parallel(client, store, object_id, target, partial, node=node,
                                 overwrite=overwrite, generation=generation, fresh=fresh,
                                 entry=entry, info=info, streams=streams, notify=notify,
                                 progress=progress)
    prefix = 0
    if isinstance(entry, DownloadEntry):
        have = os.path.getsize(partial) if os.path.isfile(partial) else -1
        reason = _start_over_reason(object_id, entry, fresh, have, generation)
        if reason:
            notify(reason)
        else:
            prefix = have
        if prefix == 0:
            store.drop(DOWNLOAD, node, object_id, target)
            entry = None
    if entry is not None:
        try:
            return _get_into(client, store, object_id, target, partial, node=node,
                             overwrite=overwrite, entry=entry, prefix=prefix, notify=notify,
                             progress=progress)
        except (errors.GenerationMismatch, errors.ObjectNotFound) as err:
            store.drop(DOWNLOAD, node, object_id, target)
            if isinstance(err, errors.ObjectNotFound):
                remove_if_present(partial)
                raise
            notify(f"{object_id} changed since the interrupted download: starting over")
    return _get_into(client, store, object_id, target, partial, node=node, overwrite=overwrite,
                     entry=None, prefix=0, generation=generation, notify=notify,
                     progress=progress)


def _get_into(client: Client, store: StateStore, object_id: str, target: str, partial: str, *,
              node: str, overwrite: bool, entry: DownloadEntry | None, prefix: int,
              generation: str = "", notify: Notify, progress: Progress | None) -> ObjectInfo:
    hasher = hashlib.sha256()
    pin = entry.generation if entry else generation
    stream = client.iter_download(object_id, start=prefix, if_generation_match=pin, verify=False)
    # The partial file is made only once the node has answered with bytes: a failed first call
    # (no such object, a bad range) leaves nothing behind.
    f = _open_partial(partial, prefix, hasher) if prefix else None
    done = prefix
    try:
        for _, data in stream:
            info = stream.info
            if entry is None:
                entry = DownloadEntry(node=node, object_id=object_id, path=target,
                                      generation=info.generation, size=info.size,
                                      sha256=info.sha256)
                store.save(entry)  # before the first byte lands: a kill -9 can resume
            elif done == prefix and prefix:
                notify(f"resuming {object_id} at {human_size(prefix)} of "
                       f"{human_size(entry.size)}")
            if f is None:
                f = _open_partial(partial, 0, hasher)
            f.write(data)
            hasher.update(data)
            done += len(data)
            if progress:
                progress(done, info.size)
        info = stream.info
        assert info is not None
        if f is None:  # an empty object, or nothing was left to fetch
            f = _open_partial(partial, prefix, hashlib.sha256())
        f.flush()
        os.fsync(f.fileno())
    except OssError as err:
        if resumable(err) and done > 0:  # the partial file and its entry are kept
            err.metadata[RERUN_RESUMES] = "1"
        raise
    except KeyboardInterrupt:
        raise _interrupted(done, stream.info.size if stream.info else 0) from None
    finally:
        if f is not None:
            f.close()
    return _finish(store, object_id, target, partial, node=node, overwrite=overwrite, info=info,
                   got=hasher.hexdigest())


def _start_over_reason(object_id: str, entry: DownloadEntry, fresh: bool, have: int,
                       generation: str) -> str | None:
    """Why an interrupted download's partial file (`have` bytes, -1 = none) cannot be
    continued for the object at `generation` ("" = not known yet); None: it can."""
    if fresh:
        return f"--no-resume: starting {object_id} over"
    if have < 0:
        return f"the partial file of {object_id} is gone: starting over"
    if generation and generation != entry.generation or have > entry.size:
        return f"{object_id} changed since the interrupted download: starting over"
    if entry.ranges and (have != entry.size or not valid(entry.ranges, entry.size)):
        return (f"the partial file of {object_id} is not what the interrupted download left: "
                f"starting over")
    return None


def _interrupted(done: int, total: int) -> TransferInterrupted:
    return TransferInterrupted(f"at {human_size(done)} of {human_size(total)}; run the same "
                               f"command again to resume")


def _finish(store: StateStore, object_id: str, target: str, partial: str, *, node: str,
            overwrite: bool, info: ObjectInfo, got: str) -> ObjectInfo:
    """Move the complete partial file into place if it hashes to `got` == the object's SHA-256
    and forget the entry; a wrong digest discards both, so a re-run starts over."""
    try:
        check_sha256(object_id, got, info.sha256,
                     ": the partial file was discarded, run again to start over")
    except errors.Sha256Mismatch:
        store.drop(DOWNLOAD, node, object_id, target)
        remove_if_present(partial)
        raise
    if overwrite:
        os.replace(partial, target)
    else:
        _place_new(partial, target)
    store.drop(DOWNLOAD, node, object_id, target)
    return info


# --------------------------------------------------------------------------------------------
# get over several streams


def _get_parallel(client: Client, store: StateStore, object_id: str, target: str, partial: str,
                  *, node: str, overwrite: bool, generation: str, fresh: bool,
                  entry: DownloadEntry | UploadEntry | None, info: ObjectInfo, streams: int,
                  notify: Notify, progress: Progress | None) -> ObjectInfo:
    """The parallel `get`: continue the entry's ranges if they still fit the object `info`
    (the current version), else start over; a version change met on the way (the object was
    overwritten since the stat) starts over once more, saying so."""
    if generation and generation != info.generation:  # changed since the caller's own stat
        raise errors.GenerationMismatch(f"{object_id} changed as the download began: run again")
    ranges = None
    if isinstance(entry, DownloadEntry):
        have = os.path.getsize(partial) if os.path.isfile(partial) else -1
        reason = _start_over_reason(object_id, entry, fresh, have, info.generation)
        if reason:
            notify(reason)
        else:  # a one-stream run's prefix is one finished range
            ranges = entry.ranges or after_prefix(entry.size, have, streams)
    while True:
        try:
            return _get_ranges(client, store, object_id, target, partial, node=node,
                               overwrite=overwrite, info=info, ranges=ranges, streams=streams,
                               notify=notify, progress=progress)
        except (errors.GenerationMismatch, errors.ObjectNotFound):
            store.drop(DOWNLOAD, node, object_id, target)  # its bytes belong to no version
            remove_if_present(partial)
            if ranges is None:
                raise
        notify(f"{object_id} changed since the interrupted download: starting over")
        info, ranges = client.stat(object_id), None


def _get_ranges(client: Client, store: StateStore, object_id: str, target: str, partial: str,
                *, node: str, overwrite: bool, info: ObjectInfo,
                ranges: tuple[tuple[int, int, int], ...] | None, streams: int, notify: Notify,
                progress: Progress | None) -> ObjectInfo:
    """Fetch the rest of `ranges` (None: all of a fresh split) into the partial file, saving
    their progress in the entry, then verify and place it (`_finish`)."""
    if ranges is None:
        ranges = split(0, info.size, streams)
    tally = Tally(ranges)
    entry = DownloadEntry(node=node, object_id=object_id, path=target,
                          generation=info.generation, size=info.size, sha256=info.sha256,
                          ranges=ranges)
    if tally.done():
        notify(f"resuming {object_id} at {human_size(tally.done())} of {human_size(info.size)}")
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | (0 if tally.done() else os.O_TRUNC), 0o666)
    try:
        os.ftruncate(fd, info.size)  # full size: ranges land anywhere (a prefix is extended)
        store.save(entry)  # before the first byte lands: a kill -9 can resume
        try:
            fetch(client, object_id, fd, tally, generation=info.generation, streams=streams,
                  progress=progress,
                  checkpoint=lambda now: store.save(dataclasses.replace(entry, ranges=now)))
        except OssError as err:
            if resumable(err):  # the entry holds what was fetched
                err.metadata[RERUN_RESUMES] = "1"
            raise
        except KeyboardInterrupt:
            raise _interrupted(tally.done(), info.size) from None
        got = file_sha256(fd)  # once, after every range: no stream saw the whole object
        os.fsync(fd)
    finally:
        os.close(fd)
    return _finish(store, object_id, target, partial, node=node, overwrite=overwrite, info=info,
                   got=got)


def _open_partial(partial: str, prefix: int, hasher) -> Any:
    """The partial file, open for writing at `prefix`, its first `prefix` bytes fed to `hasher`
    (they are hashed again, so the final check covers the kept bytes too)."""
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o666)
    f = os.fdopen(fd, "r+b")
    left = prefix
    while left and (block := f.read(min(_BLOCK, left))):
        hasher.update(block)
        left -= len(block)
    f.truncate(prefix)
    f.seek(prefix)
    return f
