"""One object over several Upload streams at once: the client side of a sliced session.

Why: one stream is bounded by one worker thread on the node and one on the client (CRC-32,
protobuf, the socket); a big object moves faster over several, each landing on a worker of its
own. The node cuts the object into slices, each a session with its own claim, checkpoints and
resume point (API.md, "Sliced sessions"); this module sends every unfinished slice on its own
thread with the library's resuming `_upload_session`, then commits the sliced session with an
empty chunk at offset `file_size` (carrying the object's SHA-256).

The bytes come from one source shared by the threads: `os.pread` on its file descriptor where
it has one, else seek + read under a lock. The object's SHA-256, when the caller has none, is
computed by one more thread reading the source in order while the slices go out; the node
checks it over the whole object at commit, so nothing of two versions of a file can commit.
Ctrl-C (or any failure) stops every slice at its next chunk; each keeps its durable offset, so
the same call with the sliced session's upload_id resumes every slice.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import threading
from typing import IO, TYPE_CHECKING, Callable

from node.pb import oss_pb2

if TYPE_CHECKING:
    from node.client import Client, ObjectInfo, Progress

_HASH_BLOCK = 4 * 1024 * 1024
_WAIT_SECONDS = 0.2
#: How long a stopped upload waits for its slice streams to end before it gives up on them.
_STOP_GRACE = 30.0


class Stopped(Exception):
    """The parallel upload was told to stop (another slice failed, or Ctrl-C)."""


class SourceWindow(io.RawIOBase):
    """Bytes [start, start + length) of a shared source, as a file of their own. Reads use
    `os.pread` when the source has a descriptor (no shared position), else seek + read under
    `lock`. `stop` makes the next read raise Stopped."""

    def __init__(self, source: IO[bytes], start: int, length: int, lock: threading.Lock,
                 stop: threading.Event) -> None:
        super().__init__()
        self._source, self._start, self._length = source, start, length
        self._lock, self._stop = lock, stop
        self._pos = 0
        try:
            self._fd: int | None = source.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = base + offset
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if self._stop.is_set():
            raise Stopped("the parallel upload was stopped")
        left = self._length - self._pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        at = self._start + self._pos
        if self._fd is not None:
            data = os.pread(self._fd, n, at)
        else:
            with self._lock:
                self._source.seek(at)
                data = self._source.read(n)
        self._pos += len(data)
        return data


def upload_sliced(client: Client, session: oss_pb2.UploadSession, source: IO[bytes], size: int,
                  sha256: str, progress: Progress | None) -> ObjectInfo:
    """Send every unfinished slice of `session` at once, then commit it; returns the object."""
    base = source.tell()
    lock, stop = threading.Lock(), threading.Event()
    done = {s.upload_id: s.uploaded_offset for s in session.slices}
    report_lock = threading.Lock()

    def reporter(upload_id: str) -> Callable[[int, int], None]:
        def report(sent: int, _total: int) -> None:
            if stop.is_set():
                raise Stopped("the parallel upload was stopped")
            with report_lock:
                done[upload_id] = sent
                if progress:
                    progress(sum(done.values()), size)
        return report

    digest = sha256 or session.sha256
    pending = [s for s in session.slices
               if s.state != oss_pb2.UploadSession.ACTIVE or s.uploaded_offset < s.file_size]
    workers = len(pending) + (0 if digest else 1)
    with concurrent.futures.ThreadPoolExecutor(max(1, workers), "mini-oss-slice") as pool:
        hashing = None if digest else pool.submit(
            _sha256_of, SourceWindow(source, base, size, lock, stop))
        futures = [pool.submit(client._upload_session, s,
                               SourceWindow(source, base + s.slice_offset, s.file_size, lock, stop),
                               s.file_size, "", reporter(s.upload_id))
                   for s in pending]
        if progress:
            progress(sum(done.values()), size)
        _wait_all(futures + ([hashing] if hashing else []), stop)
        # A slice answers with the object when its sliced session had already committed (an
        # earlier run's commit whose answer was lost); else None.
        committed = next((f.result() for f in futures if f.result() is not None), None)
        if committed is not None:
            return committed
        if hashing is not None:
            digest = hashing.result()
    return _commit(client, session.upload_id, size, digest)


def _wait_all(futures: list[concurrent.futures.Future], stop: threading.Event) -> None:
    """Wait for every future; on the first failure or Ctrl-C, stop the rest and raise it."""
    try:
        pending = set(futures)
        while pending:
            finished, pending = concurrent.futures.wait(
                pending, timeout=_WAIT_SECONDS, return_when=concurrent.futures.FIRST_EXCEPTION)
            for f in finished:
                f.result()  # raises the first failure
    except BaseException:
        stop.set()
        concurrent.futures.wait(futures, timeout=_STOP_GRACE)
        raise


def _sha256_of(window: SourceWindow) -> str:
    hasher = hashlib.sha256()
    while block := window.read(_HASH_BLOCK):
        hasher.update(block)
    return hasher.hexdigest()


def _commit(client: Client, upload_id: str, size: int, sha256: str) -> ObjectInfo:
    """Ask the node to compose and commit the sliced session; a repeat after a lost answer
    returns the same object (a COMMITTED session replays it)."""
    request = oss_pb2.UploadChunk(upload_id=upload_id, offset=size, sha256=sha256)
    response = client._call(lambda stub: stub.Upload(iter([request]), **client._call_kw),
                            idempotent=True)
    return response.object
