"""Who owns a data directory, and which catalog its objects were written under.

Ownership. Two nodes recovering and sweeping one data directory delete each other's work: the
second one's start-up repair takes the first one's promoted-but-uncommitted files and new parts
for orphans. So one node owns a data directory at a time. The supervisor takes an exclusive
`flock` on `DATA_DIR/mini-oss.lock` before it touches anything and hands a duplicate of the
descriptor to each worker. A flock belongs to the open file description, not to a process, so
the lock is held until the last process of the node has exited: a supervisor killed with
SIGKILL leaves it held by its workers until they have checkpointed and gone. The file also
says who holds it (pid, host, command, since when), for the refusal message. Operator tools that
rewrite the catalog (`mini-oss fsck --rebuild-catalog`) take the same lock.

Identity. A data directory whose `catalog.db` is missing, zero bytes, or replaced by another
catalog must not look like "every object is an orphan" (recovery would destroy them all). Each
catalog carries a random `catalog_id`, and the data directory remembers it in
`DATA_DIR/catalog-id`. At start `check_catalog` compares the two and refuses, with the repair
command, whenever the catalog is not the one the objects were written under.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import time
from multiprocessing import reduction
from typing import Iterator

from node.catalog import CatalogState
from node.storage import Storage

LOCK_FILE = "mini-oss.lock"
CATALOG_ID_FILE = "catalog-id"
#: Content directories: anything in them means objects or uploads live here.
CONTENT_DIRS = ("objects", "index", "parts")
#: How long a starting node waits for the workers of a node whose supervisor died.
ORPHAN_WAIT_SECONDS = 30.0


class DataDirError(RuntimeError):
    """The data directory cannot be used as it is; the message is one line saying why and what to do."""


class DataDirBusy(DataDirError):
    """Another node (or an operator tool) holds the data directory."""


def repair_hint(data_dir: str) -> str:
    return f"mini-oss fsck --data-dir {data_dir} --rebuild-catalog"


# -- the lock ---------------------------------------------------------------------------------


class DataDirLock:
    """The held lock of a data directory: an open descriptor with an exclusive flock on it.

    Pickling it (as a worker's argument) duplicates the descriptor into the child, so the child
    holds the same lock for as long as it lives.
    """

    def __init__(self, data_dir: str, fd: int) -> None:
        self.data_dir = data_dir
        self.fd = fd

    def __reduce__(self):
        return (_rebuild_lock, (self.data_dir, reduction.DupFd(self.fd)))

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _rebuild_lock(data_dir: str, dup) -> DataDirLock:
    return DataDirLock(data_dir, dup.detach())


def acquire(data_dir: str, holder: str, *, orphan_wait: float = ORPHAN_WAIT_SECONDS,
            log=None, shared: bool = False) -> DataDirLock:
    """Take the data directory's lock, or raise DataDirBusy naming the data dir and the holder.

    A holder whose process is alive is another node: refused at once. A holder that is gone
    left workers behind that still hold the lock while they checkpoint and exit (they notice
    their supervisor's death at once): wait for them up to `orphan_wait` seconds.

    `shared`: nodes on a catalog made for several nodes (PostgreSQL) share the data directory
    on purpose; they take the lock shared, so they exclude a one-node (SQLite) node and
    `fsck --rebuild-catalog`, and are excluded by them, but not each other.
    """
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + orphan_wait
        told = False
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            info = _read_holder(fd)
            if _holder_alive(info) or time.monotonic() > deadline:
                raise DataDirBusy(_busy_message(data_dir, info, waited=told))
            if not told and log is not None:
                log.warning("data dir %s: waiting for the workers of a stopped node (%s) to exit",
                            data_dir, _describe(info))
            told = True
            time.sleep(0.1)
        # (shared holders each write it: the last one is named, which is enough to say who)
        _write_holder(fd, holder)
        return DataDirLock(data_dir, fd)
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def lock_data_dir(data_dir: str, holder: str) -> Iterator[DataDirLock]:
    """Hold the data directory's lock for a block (operator tools); DataDirBusy if a node runs."""
    lock = acquire(data_dir, holder, orphan_wait=0.0)
    try:
        yield lock
    finally:
        lock.release()


def _write_holder(fd: int, holder: str) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "holder": holder,
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    data = (json.dumps(info) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, OSError):  # written at this very moment, or damaged
        return {}


def _holder_alive(info: dict) -> bool:
    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host") != socket.gethostname():
        return True  # unknown, or on another host: assume it is alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(info: dict) -> str:
    if not info:
        return "an unknown process"
    return (f"{info.get('holder', 'a process')} (pid {info.get('pid')} on {info.get('host')}, "
            f"since {info.get('since')})")


def _busy_message(data_dir: str, info: dict, *, waited: bool) -> str:
    if waited:
        return (f"data dir {data_dir} is still locked by the workers of a stopped node "
                f"({_describe(info)}); they did not exit within {ORPHAN_WAIT_SECONDS:.0f} s")
    return (f"data dir {data_dir} is in use by {_describe(info)}: one node per data directory "
            f"(see {os.path.join(data_dir, LOCK_FILE)})")


# -- the catalog's identity -------------------------------------------------------------------


def has_content(data_dir: str) -> bool:
    """True if any object, index entry or part lives in the data directory."""
    for name in CONTENT_DIRS:
        try:
            with os.scandir(os.path.join(data_dir, name)) as entries:
                if any(True for _ in entries):
                    return True
        except FileNotFoundError:
            continue
    return False


def read_catalog_id(data_dir: str) -> str | None:
    try:
        with open(os.path.join(data_dir, CATALOG_ID_FILE), encoding="utf-8") as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def write_catalog_id(data_dir: str, catalog_id: str) -> None:
    """Record the catalog's identity in the data directory, durably."""
    path = os.path.join(data_dir, CATALOG_ID_FILE)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(catalog_id + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    Storage.fsync_dir(data_dir)


def check_catalog(data_dir: str, backend=None, log=None) -> None:
    """Refuse a catalog that is not the one this data directory's objects were written under;
    create or adopt it otherwise. Run once at start, holding the lock, before recovery.
    `backend` is a node.catalog backend (default: SQLite in `data_dir`). A mistyped
    `--catalog` URL naming an empty database is refused like a lost catalog file."""
    from node.catalog import SqliteBackend

    backend = backend or SqliteBackend(data_dir)
    os.makedirs(data_dir, exist_ok=True)
    catalog_path = backend.describe()
    state, detail = backend.inspect()
    recorded = read_catalog_id(data_dir)
    if state is CatalogState.DAMAGED:
        raise DataDirError(f"{catalog_path} cannot be read ({detail}); repair: "
                           f"{repair_hint(data_dir)}")
    if state in (CatalogState.MISSING, CatalogState.EMPTY):
        if recorded is not None or has_content(data_dir):
            what = "missing" if state is CatalogState.MISSING else "empty"
            raise DataDirError(
                f"{catalog_path} is {what} but data dir {data_dir} holds objects or "
                f"uploads; the node will not start (it would take them all for orphans); "
                f"repair: {repair_hint(data_dir)}")
        backend.prepare()
        write_catalog_id(data_dir, backend.catalog_id())
        return
    backend.prepare()  # schema upgrades, and an id for a catalog made before ids
    catalog_id = backend.catalog_id()
    if recorded is None:
        if log is not None and has_content(data_dir):
            log.warning("data dir %s: recording catalog id %s (first start with this version)",
                        data_dir, catalog_id)
        write_catalog_id(data_dir, catalog_id)
    elif recorded != catalog_id:
        raise DataDirError(
            f"{catalog_path} (id {catalog_id}) is not the catalog data dir {data_dir} "
            f"was written under (id {recorded}, in {CATALOG_ID_FILE}); put the right catalog "
            f"back, or rebuild it: {repair_hint(data_dir)}")


def install_catalog(data_dir: str, built_path: str) -> str | None:
    """Put a rebuilt catalog file in place of the current one, and record its identity.

    The current catalog (with its -wal/-shm files) is kept beside it as
    `catalog.db.damaged-<UTC time>`, whose name is returned (None if there was none).
    Run holding the lock (`lock_data_dir`).
    """
    from node.catalog import FILE_NAME as CATALOG_FILE, Catalog

    catalog_path = os.path.join(data_dir, CATALOG_FILE)
    kept = None
    if os.path.lexists(catalog_path):
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        kept = f"{CATALOG_FILE}.damaged-{stamp}"
        os.rename(catalog_path, os.path.join(data_dir, kept))
    for suffix in ("-wal", "-shm"):
        if os.path.lexists(catalog_path + suffix):
            target = os.path.join(data_dir, (kept or CATALOG_FILE + ".stale") + suffix)
            os.rename(catalog_path + suffix, target)
    os.rename(built_path, catalog_path)
    Storage.fsync_dir(data_dir)
    write_catalog_id(data_dir, Catalog.prepared_id(data_dir))
    return kept
