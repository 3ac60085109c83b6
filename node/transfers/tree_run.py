"""Moving a whole tree: `put -r` and `get -r`, several files in flight, one progress line.

Why: `node.transfers.tree` decides what a tree is; this runs it. Each file goes through the resumable
single-file functions (`node.transfers.resume.put`/`get`, one state entry each in the cache directory), so
a re-run of the same command skips what is already there (same size and SHA-256 on both sides)
and resumes what was cut, file by file.

How: `--jobs` daemon threads take files from one queue; the main thread only collects outcomes,
so it is the one Ctrl-C reaches. A failure without `--continue-on-error` stops the taking of
new files (those in flight finish). Ctrl-C stops new files too and asks those in flight to stop:
their progress callbacks raise `_Stopped` at the next chunk, which ends each stream the way an
interruption does (the node checkpoints, the state entry stays), then the run ends with
`TransferInterrupted` (exit 130 and a hint). Threads that do not stop within a few seconds are
left behind (daemon threads; closing the client cuts their streams).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import mimetypes
import os
import queue
import stat
import threading
import time
from typing import Any, Callable, Iterable

from node import errors
from node.transfers import resume
from node.transfers.resume import TransferInterrupted
from node.transfers.transfer_state import StateStore
from node.transfers.local_names import local_file_name
from node.transfers.messages import format_error
from node.transfers.tree import (Failure, LocalFile, Skipped, Tally, UnsafePath, object_id_for,
                       relative_path_for, shown, walk)

Notify = Callable[[str], Any]
_BLOCK = 1024 * 1024
#: How long Ctrl-C waits for files in flight to stop cleanly before leaving them behind.
_STOP_WAIT = 5.0
_MOVED, _UNCHANGED, _STOPPED = "moved", "unchanged", "stopped"


class _Stopped(Exception):
    """Raised from a progress callback: the run was interrupted, end this file's stream."""


class TreeProgress:
    """One progress line for all files (total: every planned byte; done: summed over files,
    unchanged ones counted whole), and the stop switch the workers' callbacks look at.
    Thread-safe; `line` (a node.transfers.progress.ProgressLine) may be None: nothing is drawn."""

    def __init__(self, line, command: str, notify: Notify) -> None:
        self._line, self._command, self._notify = line, command, notify
        self._lock = threading.Lock()
        self._by_file: dict[str, int] = {}
        self.done = self.total = self.files = self.finished = 0
        self.stopping = threading.Event()

    def plan(self, files: int, total: int) -> None:
        with self._lock:
            self.files, self.total = files, total
            self._draw()

    def for_file(self, key: str) -> Callable[[int, int], None]:
        def report(done: int, _size: int) -> None:
            if self.stopping.is_set():
                raise _Stopped()
            self.advance(key, done)
        return report

    def advance(self, key: str, done: int) -> None:
        with self._lock:
            self.done += done - self._by_file.get(key, 0)
            self._by_file[key] = done
            self._draw()

    def file_finished(self) -> None:
        with self._lock:
            self.finished += 1
            self._draw()

    def notify(self, message: str) -> None:
        """Say something on stderr without tearing the progress line."""
        with self._lock:
            if self._line is not None:
                self._line.close()
            self._notify(message)

    def _draw(self) -> None:
        if self._line is not None:
            self._line.label = f"{self._command} -r {self.finished}/{self.files} files"
            self._line(min(self.done, self.total), self.total)


# --------------------------------------------------------------------------------------------
# put -r


def put_tree(client, root: str, prefix: str, *, node: str, jobs: int, keep_going: bool,
             fresh: bool, progress: TreeProgress, store: StateStore | None = None,
             content_type: str | None = None, **create: Any) -> Tally:
    """Upload every regular file below `root` as `prefix` + its escaped relative path."""
    if not os.path.isdir(root):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", root)
    store = store or StateStore()
    tally = Tally("put")
    files: list[tuple[LocalFile, str]] = []
    for entry in walk(root):
        if isinstance(entry, Skipped):
            tally.skipped += 1
            progress.notify(f"skipping {shown(entry.relative)}: {entry.reason}")
            continue
        if not isinstance(entry, LocalFile):  # a directory that cannot be listed
            tally.failures.append(_failure(entry.relative, "", entry.error, node))
            continue
        tally.files += 1
        try:
            files.append((entry, object_id_for(prefix, entry.relative)))
        except errors.InvalidName as err:
            tally.failures.append(_failure(entry.relative, "", err, node))

    def put_one(item: tuple[LocalFile, str]) -> str:
        local, object_id = item
        size = os.stat(local.path).st_size
        try:
            there = client.stat(object_id)
        except errors.ObjectNotFound:
            there = None
        if (there is not None and there.size == size
                and there.sha256.lower() == _sha256(local.path)):
            return _UNCHANGED
        file_name = local_file_name(local.path)
        kind = content_type if content_type is not None else (
            mimetypes.guess_type(file_name)[0] or "")
        resume.put(client, store, local.path, object_id, node=node, fresh=fresh,
                   notify=progress.notify, progress=progress.for_file(local.relative),
                   file_name=file_name, content_type=kind, **create)
        return _MOVED

    _run(files, put_one, tally, progress, jobs=jobs, keep_going=keep_going, node=node,
         describe=lambda item: (item[0].relative, item[1], item[0].size))
    return tally


# --------------------------------------------------------------------------------------------
# get -r


def get_tree(client, prefix: str, dest: str, *, node: str, jobs: int, keep_going: bool,
             fresh: bool, force: bool, progress: TreeProgress,
             store: StateStore | None = None) -> Tally:
    """Download every object whose id starts with `prefix` below `dest`."""
    store = store or StateStore()
    tally = Tally("get")
    objects: list[tuple[Any, str]] = []
    claimed: dict[str, str] = {}  # safe path -> the object id that got it first
    for info in client.list_objects(prefix=prefix):
        tally.files += 1
        try:
            relative = relative_path_for(prefix, info.object_id)
            if relative in claimed:
                raise UnsafePath(f"names the same path as {claimed[relative]!r}: not written")
        except UnsafePath as err:
            tally.failures.append(_failure("", info.object_id, err, node))
            continue
        claimed[relative] = info.object_id
        objects.append((info, relative))
    os.makedirs(dest, exist_ok=True)

    def get_one(item: tuple[Any, str]) -> str:
        info, relative = item
        target = _inside(dest, relative)
        if os.path.lexists(target):
            if _same_file(target, info):
                return _UNCHANGED
            if not force:
                raise FileExistsError(errno.EEXIST, "exists and differs: not replacing it "
                                                    "(use --force)", target)
        resume.get(client, store, info.object_id, target, node=node, overwrite=force,
                   fresh=fresh, notify=progress.notify, progress=progress.for_file(relative))
        return _MOVED

    _run(objects, get_one, tally, progress, jobs=jobs, keep_going=keep_going, node=node,
         describe=lambda item: (item[1], item[0].object_id, item[0].size))
    return tally


def _inside(dest: str, relative: str) -> str:
    """`dest`/`relative`, its directories made one by one: an existing symbolic link (or
    file) on the way is refused, never followed, so nothing lands outside `dest`."""
    current = dest
    *directories, name = relative.split("/")
    for segment in directories:
        current = os.path.join(current, segment)
        try:
            os.mkdir(current)
        except FileExistsError:
            if os.path.islink(current) or not os.path.isdir(current):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory (or a symbolic link): "
                                                        "not writing below it", current) from None
    return os.path.join(current, name)


def _same_file(path: str, info) -> bool:
    """A regular file (not a link) with the object's size and SHA-256."""
    st = os.lstat(path)
    return (stat.S_ISREG(st.st_mode) and st.st_size == info.size
            and _sha256(path) == info.sha256.lower())


def _sha256(path: str) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


# --------------------------------------------------------------------------------------------
# The pool


def _run(items: list, transfer: Callable[[Any], str], tally: Tally, progress: TreeProgress, *,
         jobs: int, keep_going: bool, node: str,
         describe: Callable[[Any], tuple[str, str, int]]) -> None:
    """Run `transfer` over `items` on `jobs` threads, counting into `tally`."""
    progress.plan(tally.files, sum(describe(item)[2] for item in items))
    if tally.failures and not keep_going:  # known before any byte moves: start nothing
        tally.not_started = len(items)
        return
    todo = collections.deque(items)
    results: queue.SimpleQueue = queue.SimpleQueue()
    halt = threading.Event()  # take no new file

    def worker() -> None:
        while not halt.is_set():
            try:
                item = todo.popleft()
            except IndexError:
                return
            try:
                outcome: str | BaseException = transfer(item)
            except _Stopped:
                outcome = _STOPPED
            except Exception as err:  # this file's failure, reported with its name
                outcome = err
                if not keep_going:  # here, not in the collector: no other worker starts one
                    halt.set()
            results.put((item, outcome))

    threads = [threading.Thread(target=worker, name=f"mini-oss-tree-{i}", daemon=True)
               for i in range(min(jobs, len(items)))]
    for thread in threads:
        thread.start()
    try:
        _collect(threads, results, tally, progress, node, describe)
    except KeyboardInterrupt:
        halt.set()
        progress.stopping.set()
        _wait_for(threads)
        done = tally.moved + tally.unchanged
        raise TransferInterrupted(f"after {done} of {tally.files} files; run the same command "
                                  f"again to resume") from None
    tally.not_started = len(todo)
    # Listed by path, whichever finished first (the ones known at planning included).
    tally.failures.sort(key=lambda failure: (failure.where, failure.object_id))


def _collect(threads, results, tally: Tally, progress: TreeProgress, node: str,
             describe) -> None:
    while any(thread.is_alive() for thread in threads) or not results.empty():
        try:
            item, outcome = results.get(timeout=0.1)
        except queue.Empty:
            continue
        where, object_id, size = describe(item)
        if outcome == _MOVED:
            tally.moved += 1
            tally.moved_bytes += size
        elif outcome == _UNCHANGED:
            tally.unchanged += 1
        if outcome in (_MOVED, _UNCHANGED):
            progress.advance(where, size)
        elif isinstance(outcome, BaseException):
            tally.failures.append(_failure(where, object_id, outcome, node))
        progress.file_finished()


def _wait_for(threads: Iterable[threading.Thread]) -> None:
    """Give files in flight a few seconds to end their streams; a second Ctrl-C stops waiting."""
    deadline = time.monotonic() + _STOP_WAIT
    try:
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        pass


def _failure(where: str, object_id: str, err: BaseException, node: str) -> Failure:
    return Failure(where, object_id, format_error(err, node))
