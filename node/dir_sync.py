"""One directory fsync for the many commits that need one at the same moment.

Why: a commit renames its file into objects/ and its entry into index/, and each rename is
durable only once the directory is fsynced. Under 100 concurrent small puts a worker asked for
two directory fsyncs per object, all of the same two directories, each waiting in the disk's
queue behind the others (and, on ext4 without a journal, holding the directory's lock while it
writes). One fsync covers every rename made before it began, so callers that arrive while one
runs wait for the next, which one of them runs for all of them: group commit, as the catalog
does for its transactions (node.catalog.sqlite).

The promise is unchanged: `sync()` returns only after an fsync that began after it was called
has ended without error. A failed fsync leaves its waiters to try again themselves; each of
them reports its own error.
"""

from __future__ import annotations

import os
import threading
from typing import Callable


def fsync_dir(path: str) -> None:
    """fsync the directory `path` (its entries: names created, renamed or removed in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SharedDirSync:
    """The fsyncs of one directory, shared by the threads of a process."""

    def __init__(self, path: str, fsync: Callable[[str], None] = fsync_dir) -> None:
        self.path = path
        self._fsync = fsync
        self._cond = threading.Condition()
        self._begun = 0      # fsyncs begun, numbered 1, 2, ...
        self._done = 0       # the latest of them that ended without error
        self._running = False

    def sync(self) -> None:
        with self._cond:
            needed = self._begun + 1  # the first fsync to begin after this call
            while self._done < needed:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._begun += 1
                mine = self._begun
                ok = False
                self._cond.release()
                try:
                    self._fsync(self.path)
                    ok = True
                finally:
                    self._cond.acquire()
                    self._running = False
                    if ok:
                        self._done = mine
                    self._cond.notify_all()
