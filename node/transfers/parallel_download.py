"""One object over several Download streams at once, written into one file with pwrite.

Why: a Download stream is served by one node worker and read by one client thread (CRC, copy,
write); a big object fetched as N byte ranges on N connections keeps N workers and N client
threads busy. That pays where the client has cores to spare; where it does not, the read-back
hash makes it slower (tools/bench/RESULTS.md, "get --parallel").

How: `fetch` takes the ranges of a `parallel_plan.Tally` and runs up to `streams` threads.
Thread t fetches one unfinished range after another on the client's channel t, each as an
ordinary `DownloadStream` (ranged with start/end, pinned with `if_generation_match`, CRC-32
checked per chunk, re-issued from its next byte after a cut, exactly as a one-stream download
resumes), writes every chunk at its offset with `os.pwrite`, and only then counts it in the
tally, so a saved tally never claims bytes that are not in the file (for a kill -9 the page
cache holds them: no fsync needed). The calling thread only waits: it reports the tally's sum
to `progress`, hands due snapshots to `checkpoint`, and on the first failure, or on Ctrl-C
(which only it receives), cancels every stream, joins the threads, saves a last snapshot and
raises. No stream sees the whole object, so no stream hashes: the caller reads the finished
file back once (`file_sha256`) and compares with ObjectInfo.sha256 (`check_sha256`).
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
import time
from typing import Any, Callable

from node import errors
from node.transfers.parallel_plan import Range, Tally, split

Progress = Callable[[int, int], Any]
Checkpoint = Callable[[tuple[Range, ...]], Any]

#: How often the waiting thread reports progress and looks at the tally.
REPORT_SECONDS = 0.1
_READ_BLOCK = 4 * 1024 * 1024


def download(client, object_id: str, fd: int, *, streams: int, chunk_size: int = 0,
             verify: bool = True, if_generation_match: str = "",
             progress: Progress | None = None) -> Any:
    """The whole object into the open file `fd` over up to `streams` streams; its ObjectInfo.
    (`Client.download(..., parallel=N)`: the file is a fresh temporary one, nothing resumes.)"""
    info = client.stat(object_id)  # the size to cut; the version every range is pinned to
    if if_generation_match and info.generation != if_generation_match:
        raise errors.GenerationMismatch(f"object {object_id!r} is at generation "
                                        f"{info.generation}, not {if_generation_match}")
    os.ftruncate(fd, info.size)
    tally = Tally(split(0, info.size, streams, chunk_size))
    fetch(client, object_id, fd, tally, generation=info.generation, streams=streams,
          chunk_size=chunk_size, progress=progress)
    if verify:
        check_sha256(object_id, file_sha256(fd), info.sha256)
    return info


def fetch(client, object_id: str, fd: int, tally: Tally, *, generation: str, streams: int,
          chunk_size: int = 0, progress: Progress | None = None,
          checkpoint: Checkpoint | None = None,
          clock: Callable[[], float] = time.monotonic) -> None:
    """Fill every unfinished range of `tally` into `fd` (see the module); returns once all are
    done, or raises the first failure (KeyboardInterrupt included) after stopping the rest."""
    run = _Run(client, object_id, fd, tally, generation, chunk_size)
    threads = [threading.Thread(target=run.worker, args=(t,), name=f"mini-oss-range-{t}",
                                daemon=True)
               for t in range(min(streams, len(run.todo)))]
    run.running = len(threads)
    for thread in threads:
        thread.start()
    try:
        while threads and not run.ended.wait(REPORT_SECONDS):
            if progress:
                progress(tally.done(), tally.size)
            if checkpoint and (due := tally.checkpoint(clock())) is not None:
                checkpoint(due)
    finally:  # also on Ctrl-C, which arrives here
        run.stop_all()
        for thread in threads:  # cancelled, each has at most one write to finish; and the
            thread.join()       # caller closes `fd` next, whose number must not be written to
        if checkpoint and tally.unfinished():  # what the threads got to: a re-run starts there
            checkpoint(tally.snapshot())
    if run.failure is not None:
        raise run.failure
    if progress:
        progress(tally.done(), tally.size)


class _Run:
    """What the threads of one `fetch` share: the ranges left, the open streams, the stop flag
    and the first failure."""

    def __init__(self, client, object_id: str, fd: int, tally: Tally, generation: str,
                 chunk_size: int) -> None:
        self.client, self.object_id, self.fd, self.tally = client, object_id, fd, tally
        self.generation, self.chunk_size = generation, chunk_size
        self.todo = collections.deque(tally.unfinished())
        self.lock = threading.Lock()
        self.stop = threading.Event()
        #: Set when the last thread is done or the first one failed: the waiting thread wakes.
        self.ended = threading.Event()
        self.running = 0
        self.failure: BaseException | None = None
        self.streams: set[Any] = set()

    def worker(self, channel: int) -> None:
        try:
            while (index := self._next()) is not None:
                self._fetch_range(index, channel)
        except BaseException as exc:  # the first one is raised by fetch(); later ones are echoes
            with self.lock:
                if not self.stop.is_set():
                    self.failure = exc
            self.stop_all()
            self.ended.set()
        finally:
            with self.lock:
                self.running -= 1
                if self.running == 0:
                    self.ended.set()

    def _next(self) -> int | None:
        with self.lock:
            if self.stop.is_set() or not self.todo:
                return None
            return self.todo.popleft()

    def _fetch_range(self, index: int, channel: int) -> None:
        start, end, done = self.tally.range(index)
        stream = self.client.iter_download(
            self.object_id, start=start + done, end=end, chunk_size=self.chunk_size,
            if_generation_match=self.generation, verify=False, channel=channel)
        with self.lock:
            if self.stop.is_set():
                return
            self.streams.add(stream)
        try:
            for offset, data in stream:
                _pwrite_all(self.fd, data, offset)
                self.tally.add(index, len(data))  # after the write: never ahead of the file
        finally:
            with self.lock:
                self.streams.discard(stream)
        if stream.info is not None and stream.info.generation != self.generation:
            raise errors.GenerationMismatch(f"object {self.object_id!r} changed during the "
                                            f"download")

    def stop_all(self) -> None:
        with self.lock:
            self.stop.set()
            for stream in self.streams:
                stream.cancel()


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def file_sha256(fd: int) -> str:
    """SHA-256 of the whole file `fd`, read from its start (pread: the file offset is left)."""
    hasher = hashlib.sha256()
    offset = 0
    while block := os.pread(fd, _READ_BLOCK, offset):
        hasher.update(block)
        offset += len(block)
    return hasher.hexdigest()


def check_sha256(object_id: str, got: str, expected: str, hint: str = "") -> None:
    """Raise Sha256Mismatch unless `got` is the object's digest (`hint` ends the message)."""
    expected = expected.lower()
    if expected and got != expected:
        raise errors.Sha256Mismatch(f"{object_id} downloaded to bytes that hash to {got}, its "
                                    f"ObjectInfo says {expected}{hint}",
                                    expected=expected, got=got)
