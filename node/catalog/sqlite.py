"""The SQLite catalog: upload sessions and committed objects in an embedded database file.

Why SQLite: every worker process must see the same sessions and objects, and a storage node
must not lose them in a crash. One file in the data directory (`catalog.db`), WAL mode so
readers never wait for the writer, `synchronous=FULL` so a committed transaction survives a
power cut, and `BEGIN IMMEDIATE` for every write so two processes never deadlock upgrading a
read lock. Busy waits are absorbed here (a busy timeout, then a bounded retry) so that
"database is locked" never reaches a client.

What is written, and when: a session row at creation, at each checkpoint (stream end, every
`checkpoint_bytes`/`checkpoint_interval`, before an error ends a stream) and at its end; an
object row at commit. Never per chunk.

The object row is the truth about which version of an object is current; `index/<object_id>`
(maintained by storage) mirrors it for people and tools, and recovery repairs the mirror.

A `Catalog` holds one connection and is used by one thread at a time; `CatalogPool` hands each
thread its own for reads, and gives the process one `GroupCommit` for writes.

Group commit: every write of a process goes through one `GroupCommit`, which runs the writes
that are waiting together in one transaction, each in a savepoint of its own (a write that
raises is rolled back alone and its caller gets its error; the others commit). Why: small
objects are two catalog writes each (the session, the commit), and with a connection per I/O
thread every one of them was a transaction of its own under SQLite's single writer lock —
held, on a busy worker, while its thread waited for the GIL, and waited for by the other
threads in SQLite's busy handler, which sleeps 1, 2, 5 … 100 ms between tries. py-spy found
seven of a worker's eight I/O threads waiting there; small objects went at ~200 per second
with one worker or two. Writers of the process now queue on a lock the kernel hands over
at once, one of them runs the batch, and one fsync of the WAL makes the batch durable; every
caller returns only after that commit, as before. Between processes, writers queue on a lock
file (`WRITE_LOCK`, flock) before `BEGIN IMMEDIATE`, for the same reason; a process that does
not take it (an older node, `sqlite3` by hand) still meets the busy timeout.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import secrets
import sqlite3
import threading
import time
import urllib.parse
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from node.catalog.records import (OBJECT_COLUMNS, SESSION_COLUMNS, SESSION_COLUMNS_ADDED,
                                  CatalogState, FileRef, check_session_caps,
                                  ObjectRecord, SessionRecord, object_from_row, object_values,
                                  prefix_range, session_from_row, session_values)
from node.errors import DiskFull
from node.session_rules import State

T = TypeVar("T")
FILE_NAME = "catalog.db"
WRITE_LOCK = ".catalog-write.lock"
#: The most writes one transaction takes (a longer queue is served by the next batch).
MAX_BATCH = 64
SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 10_000
LOCKED_RETRY_SECONDS = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    upload_id           TEXT PRIMARY KEY,
    object_id           TEXT NOT NULL,
    file_name           TEXT NOT NULL,
    file_size           INTEGER NOT NULL,
    chunk_size          INTEGER NOT NULL,
    uploaded_offset     INTEGER NOT NULL,
    sha256              TEXT NOT NULL,
    state               INTEGER NOT NULL,
    content_type        TEXT NOT NULL,
    metadata            TEXT NOT NULL,
    if_absent           INTEGER NOT NULL,
    if_generation_match TEXT NOT NULL,
    client              TEXT NOT NULL,
    created_at_ms       INTEGER NOT NULL,
    updated_at_ms       INTEGER NOT NULL,
    expires_at_ms       INTEGER NOT NULL,
    object              TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_state_object ON sessions (state, object_id, upload_id);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_at_ms);
CREATE INDEX IF NOT EXISTS sessions_by_client ON sessions (state, client);
CREATE TABLE IF NOT EXISTS objects (
    object_id     TEXT PRIMARY KEY,
    generation    TEXT NOT NULL,
    file_name     TEXT NOT NULL,
    size          INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    disk_name     TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS node_facts (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS garbage (
    kind     TEXT NOT NULL,
    name     TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;
"""
_SELECT_OBJECT = f"SELECT {', '.join(OBJECT_COLUMNS)} FROM objects WHERE object_id = ?"
_REPLACE_OBJECT = (f"INSERT OR REPLACE INTO objects ({', '.join(OBJECT_COLUMNS)})"
                   f" VALUES ({', '.join('?' * len(OBJECT_COLUMNS))})")
#: A session row: new sessions (insert_session) and a one-call put's, born COMMITTED.
INSERT_SESSION = (f"INSERT INTO sessions ({', '.join(SESSION_COLUMNS)})"
                  f" VALUES ({', '.join('?' * len(SESSION_COLUMNS))})")
SLICES_INDEX = ("CREATE INDEX IF NOT EXISTS sessions_by_parent ON sessions (parent_id, slice_offset)"
                " WHERE parent_id != ''")


def inspect_catalog(data_dir: str) -> tuple[CatalogState, str]:
    """What the catalog file of `data_dir` is, without creating or changing it."""
    path = os.path.join(data_dir, FILE_NAME)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return CatalogState.MISSING, ""
    if size == 0:
        return CatalogState.EMPTY, ""
    try:
        db = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=rw", uri=True,
                             timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                return CatalogState.EMPTY, ""
            if not {"sessions", "objects", "node_facts"} <= tables:
                return CatalogState.DAMAGED, "it is not a mini-oss catalog (tables missing)"
            db.execute("SELECT 1 FROM objects LIMIT 1").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return CatalogState.DAMAGED, str(exc)
    return CatalogState.READY, ""


def _open_write_lock(data_dir: str) -> int | None:
    """This connection's own descriptor of the lock file (an open file description of its own,
    so flock also orders this process's connections); None where it cannot be made (a
    read-only data dir, where nothing is written)."""
    try:
        return os.open(os.path.join(data_dir, WRITE_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return None


class Catalog:
    """One connection to the catalog. Not shared between threads."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, FILE_NAME)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                  timeout=BUSY_TIMEOUT_MS / 1000)
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.db.execute("PRAGMA synchronous = FULL")
        self._write_lock = _open_write_lock(data_dir)
        #: Where this connection's writes go: the process's group commit (CatalogPool), or
        #: None to write through this connection alone.
        self.group: GroupCommit | None = None

    @classmethod
    def prepare(cls, data_dir: str) -> None:
        """Create the schema and switch to WAL, once, before any worker opens the catalog.

        Several processes switching a fresh database to WAL at the same moment can fail with
        "database is locked"; doing it once up front avoids that race entirely.
        """
        catalog = cls(data_dir)
        try:
            catalog.db.execute("PRAGMA journal_mode = WAL")
            catalog.db.executescript(SCHEMA)  # idempotent; executescript commits by itself
            have = {row[1] for row in catalog.db.execute("PRAGMA table_info(sessions)")}
            with catalog.write():
                for column, sql in SESSION_COLUMNS_ADDED.items():
                    if column not in have:
                        catalog.db.execute(f"ALTER TABLE sessions ADD COLUMN {column} {sql}")
                catalog.db.execute(SLICES_INDEX)
            with catalog.write():
                catalog.db.execute(
                    "INSERT OR IGNORE INTO node_facts VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
                catalog.db.execute(
                    "INSERT OR IGNORE INTO node_facts VALUES ('page_token_secret', ?)", (os.urandom(32),))
                catalog.db.execute(
                    "INSERT OR IGNORE INTO node_facts VALUES ('catalog_id', ?)", (secrets.token_hex(16),))
                catalog.db.execute(
                    "UPDATE node_facts SET value = ? WHERE key = 'schema_version' AND value < ?",
                    (SCHEMA_VERSION, SCHEMA_VERSION))
        finally:
            catalog.close()

    @classmethod
    def prepared_id(cls, data_dir: str) -> str:
        """The identity of a prepared catalog (data directories remember it: node.datadir)."""
        catalog = cls(data_dir)
        try:
            return catalog.catalog_id()
        finally:
            catalog.close()

    def close(self) -> None:
        self.db.close()
        if self._write_lock is not None:
            os.close(self._write_lock)

    # -- transactions -------------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction of this connection alone: the lock file, then BEGIN IMMEDIATE
        takes SQLite's write lock up front."""
        if self._write_lock is not None:
            fcntl.flock(self._write_lock, fcntl.LOCK_EX)
        try:
            self._begin_immediate()
            try:
                yield self.db
                self._retry_locked(lambda: self.db.execute("COMMIT"))
            except BaseException as exc:
                self._rollback()
                typed = _typed(exc)
                if typed is exc:
                    raise
                raise typed
        finally:
            if self._write_lock is not None:
                fcntl.flock(self._write_lock, fcntl.LOCK_UN)

    def _transact(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run `body(db)` in a write transaction: the process's group commit if there is one."""
        if self.group is not None:
            return self.group.run(body)
        with self.write() as db:
            return body(db)

    def _rollback(self) -> None:
        if self.db.in_transaction:  # SQLite may already have rolled back (e.g. on SQLITE_FULL)
            self.db.execute("ROLLBACK")

    def _begin_immediate(self) -> None:
        self._retry_locked(lambda: self.db.execute("BEGIN IMMEDIATE"))

    @staticmethod
    def _retry_locked(fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + LOCKED_RETRY_SECONDS
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                typed = _typed(exc)
                if typed is not exc:
                    raise typed
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.25)

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        return self._retry_locked(lambda: self.db.execute(sql, args).fetchall())  # type: ignore[return-value]

    # -- node facts ---------------------------------------------------------------------------

    def page_token_secret(self) -> bytes:
        rows = self._read("SELECT value FROM node_facts WHERE key = 'page_token_secret'")
        return bytes(rows[0][0])

    def catalog_id(self) -> str:
        rows = self._read("SELECT value FROM node_facts WHERE key = 'catalog_id'")
        return str(rows[0][0])

    # -- sessions -----------------------------------------------------------------------------

    def insert_session(self, rec: SessionRecord, max_active: int = 0, max_per_client: int = 0,
                       slices: Sequence[SessionRecord] = ()) -> None:
        """Insert a new ACTIVE session (and the slices of a sliced one), unless a limit (0 =
        none) would be passed: the count and the insert share one write transaction, so workers
        racing for the last place cannot both win. Each slice counts as a session: it holds
        a row and a part file like one."""
        def body(db: sqlite3.Connection):
            active = mine = 0
            if max_active:
                active = db.execute("SELECT count(*) FROM sessions WHERE state = ?",
                                    (int(State.ACTIVE),)).fetchone()[0]
            if max_per_client:
                mine = db.execute("SELECT count(*) FROM sessions WHERE state = ? AND client = ?",
                                  (int(State.ACTIVE), rec.client)).fetchone()[0]
            check_session_caps(1 + len(slices), active, max_active, mine, max_per_client)
            db.executemany(INSERT_SESSION, [session_values(r) for r in (rec, *slices)])
        self._transact(body)

    def slices_of(self, parent_id: str) -> list[SessionRecord]:
        """The slices of a sliced session, in object order, whatever their state."""
        rows = self._read(f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE parent_id = ?"
                          " ORDER BY slice_offset", (parent_id,))
        return [session_from_row(r) for r in rows]

    def get_session(self, upload_id: str) -> SessionRecord | None:
        rows = self._read(f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE upload_id = ?",
                          (upload_id,))
        return session_from_row(rows[0]) if rows else None

    def checkpoint(self, upload_id: str, uploaded_offset: int, sha256: str,
                   now_ms: int, expires_at_ms: int) -> bool:
        """Record a durable resume point of an ACTIVE session; False if it is no longer ACTIVE."""

        def body(db: sqlite3.Connection):
            cur = db.execute(
                "UPDATE sessions SET uploaded_offset = ?, sha256 = ?, updated_at_ms = ?, expires_at_ms = ?"
                " WHERE upload_id = ? AND state = ?",
                (uploaded_offset, sha256, now_ms, expires_at_ms, upload_id, int(State.ACTIVE)))
            return cur.rowcount == 1
        return self._transact(body)

    def extend_expiry(self, upload_id: str, expires_at_ms: int) -> None:
        """Move an ACTIVE session's expiry to at least `expires_at_ms` (a sliced session lives
        as long as any of its slices moves)."""

        def body(db: sqlite3.Connection):
            db.execute("UPDATE sessions SET expires_at_ms = MAX(expires_at_ms, ?)"
                       " WHERE upload_id = ? AND state = ?", (expires_at_ms, upload_id, int(State.ACTIVE)))
        self._transact(body)

    def end_session(self, upload_id: str, state: State, now_ms: int, expires_at_ms: int,
                    only_if: State = State.ACTIVE, free: Iterable[FileRef] = ()) -> bool:
        """Move a session from `only_if` to an ended state; False if it was not in `only_if`.
        The files in `free` become garbage in the same transaction (see `_add_garbage`)."""

        def body(db: sqlite3.Connection):
            cur = db.execute(
                "UPDATE sessions SET state = ?, updated_at_ms = ?, expires_at_ms = ?"
                " WHERE upload_id = ? AND state = ?",
                (int(state), now_ms, expires_at_ms, upload_id, int(only_if)))
            if cur.rowcount == 1:
                self._add_garbage(db, free, now_ms)
            return cur.rowcount == 1
        return self._transact(body)

    def list_active_sessions(self, prefix: str, after: tuple[str, str] | None,
                             limit: int) -> list[SessionRecord]:
        where, args = prefix_range(prefix)
        sql = f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE state = ? AND {where}"
        args.insert(0, int(State.ACTIVE))
        if after is not None:
            sql += " AND (object_id, upload_id) > (?, ?)"
            args += list(after)
        sql += " ORDER BY object_id, upload_id LIMIT ?"
        args.append(limit)
        return [session_from_row(r) for r in self._read(sql, tuple(args))]

    def sessions_in_state(self, state: State) -> list[SessionRecord]:
        rows = self._read(f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE state = ?", (int(state),))
        return [session_from_row(r) for r in rows]

    def count_active(self, client: str | None = None) -> int:
        if client is None:
            rows = self._read("SELECT count(*) FROM sessions WHERE state = ?", (int(State.ACTIVE),))
        else:
            rows = self._read("SELECT count(*) FROM sessions WHERE state = ? AND client = ?",
                              (int(State.ACTIVE), client))
        return int(rows[0][0])

    def expired_active(self, now_ms: int, limit: int = 500) -> list[SessionRecord]:
        rows = self._read(
            f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE expires_at_ms < ? AND state = ?"
            " ORDER BY expires_at_ms LIMIT ?", (now_ms, int(State.ACTIVE), limit))
        return [session_from_row(r) for r in rows]

    # -- garbage: files to free ----------------------------------------------------------------
    #
    # A file the catalog lets go of (the part of an ended session, a replaced or deleted
    # version) is recorded here in the same transaction that lets go of it. Whoever let go
    # unlinks it at once; if that process dies first, the sweep finds the record and frees the
    # file. A name never comes back to life (it contains its upload id), so freeing one found
    # here is always safe, however late.

    @staticmethod
    def _add_garbage(db: sqlite3.Connection, files: Iterable[FileRef], now_ms: int) -> None:
        db.executemany("INSERT OR IGNORE INTO garbage (kind, name, since_ms) VALUES (?, ?, ?)",
                       [(kind, name, now_ms) for kind, name in files])

    def garbage(self, older_than_ms: int, limit: int = 1000) -> list[FileRef]:
        rows = self._read("SELECT kind, name FROM garbage WHERE since_ms < ? LIMIT ?",
                          (older_than_ms, limit))
        return [(str(kind), str(name)) for kind, name in rows]

    def forget_garbage(self, files: Iterable[FileRef]) -> None:

        def body(db: sqlite3.Connection):
            db.executemany("DELETE FROM garbage WHERE kind = ? AND name = ?", list(files))
        self._transact(body)

    def forget_ended(self, now_ms: int) -> int:
        """Drop ended sessions whose memory period is over; returns how many."""

        def body(db: sqlite3.Connection):
            cur = db.execute("DELETE FROM sessions WHERE expires_at_ms < ? AND state != ?",
                             (now_ms, int(State.ACTIVE)))
            return cur.rowcount
        return self._transact(body)

    # -- objects ------------------------------------------------------------------------------

    def get_object(self, object_id: str) -> ObjectRecord | None:
        rows = self._read(f"SELECT {', '.join(OBJECT_COLUMNS)} FROM objects WHERE object_id = ?",
                          (object_id,))
        return object_from_row(rows[0]) if rows else None

    def list_objects(self, prefix: str, after: str | None, limit: int) -> list[ObjectRecord]:
        where, args = prefix_range(prefix)
        sql = f"SELECT {', '.join(OBJECT_COLUMNS)} FROM objects WHERE {where}"
        if after is not None:
            sql += " AND object_id > ?"
            args.append(after)
        sql += " ORDER BY object_id LIMIT ?"
        args.append(limit)
        return [object_from_row(r) for r in self._read(sql, tuple(args))]

    def all_objects(self) -> list[ObjectRecord]:
        return self.list_objects("", None, -1)

    def commit_object(self, upload_id: str, obj: ObjectRecord, now_ms: int, expires_at_ms: int,
                      check: Callable[[ObjectRecord | None], None],
                      publish: Callable[[ObjectRecord], None],
                      slices: Sequence[tuple[str, FileRef]] = (),
                      new_session: SessionRecord | None = None) -> ObjectRecord | None:
        """Make `obj` the current version of its object_id, atomically across processes.

        Inside one write transaction (so no other commit or delete of any object interleaves):
        `check(current)` raises if a precondition fails; `publish(obj)` swaps the index entry;
        then the object row and the session's COMMITTED state are written; so are those of a
        sliced session's `slices` ((upload_id, part) pairs: their parts become garbage). Returns
        the version that was replaced (its bytes are now the caller's to free), or None.
        A one-call put has no ACTIVE session: it passes `new_session`, its COMMITTED row, which
        is inserted in the same transaction instead.
        """

        # Rows are built before the transaction: its writer holds the catalog's lock for every
        # process, so the work done under it is only the statements.
        object_row = object_values(obj)
        session_row = session_values(new_session) if new_session is not None else None
        object_json = obj.to_json() if session_row is None else ""  # (a put's row holds it)

        def body(db: sqlite3.Connection):
            current = self._get_object_in(db, obj.object_id)
            check(current)
            publish(obj)
            db.execute(_REPLACE_OBJECT, object_row)
            if session_row is not None:
                db.execute(INSERT_SESSION, session_row)
            else:
                cur = db.execute(
                    "UPDATE sessions SET state = ?, uploaded_offset = ?, updated_at_ms = ?, expires_at_ms = ?,"
                    " object = ? WHERE upload_id = ? AND state = ?",
                    (int(State.COMMITTED), obj.size, now_ms, expires_at_ms, object_json, upload_id,
                     int(State.ACTIVE)))
                if cur.rowcount != 1:
                    raise RuntimeError(f"session {upload_id} was not ACTIVE at commit")
            for slice_id, part in slices:
                cur = db.execute(
                    "UPDATE sessions SET state = ?, updated_at_ms = ?, expires_at_ms = ?, object = ?"
                    " WHERE upload_id = ? AND state = ?",
                    (int(State.COMMITTED), now_ms, expires_at_ms, object_json, slice_id,
                     int(State.ACTIVE)))
                if cur.rowcount != 1:
                    raise RuntimeError(f"slice {slice_id} was not ACTIVE at commit")
            self._add_garbage(db, [part for _, part in slices], now_ms)
            if current is not None and current.disk_name != obj.disk_name:
                self._add_garbage(db, [("objects", current.disk_name)], now_ms)
            return current
        return self._transact(body)

    def delete_object(self, object_id: str, check: Callable[[ObjectRecord | None], None],
                      unpublish: Callable[[ObjectRecord], None], now_ms: int) -> ObjectRecord:
        """Remove the current version of `object_id`; returns it (its bytes are the caller's to free)."""

        def body(db: sqlite3.Connection):
            current = self._get_object_in(db, object_id)
            check(current)
            assert current is not None  # check() raises for a missing object
            unpublish(current)
            db.execute("DELETE FROM objects WHERE object_id = ?", (object_id,))
            self._add_garbage(db, [("objects", current.disk_name)], now_ms)
            return current
        return self._transact(body)

    def with_object(self, object_id: str, fn: Callable[[ObjectRecord | None], T]) -> T:
        """Run fn(current row) while no other process can change `object_id` (index repair)."""

        def body(db: sqlite3.Connection):
            return fn(self._get_object_in(db, object_id))
        return self._transact(body)

    def drop_object_row(self, object_id: str) -> None:
        """Recovery only: forget an object whose bytes are gone."""

        def body(db: sqlite3.Connection):
            db.execute("DELETE FROM objects WHERE object_id = ?", (object_id,))
        self._transact(body)

    @staticmethod
    def _get_object_in(db: sqlite3.Connection, object_id: str) -> ObjectRecord | None:
        row = db.execute(_SELECT_OBJECT, (object_id,)).fetchone()
        return object_from_row(row) if row else None


def _typed(exc: BaseException) -> BaseException:
    """SQLITE_FULL is the disk's fault, not the database's: the contract's DISK_FULL."""
    if not isinstance(exc, sqlite3.OperationalError) or "full" not in str(exc):
        return exc
    typed = DiskFull("no space left to record the change")
    typed.__cause__ = exc
    return typed


def _in_savepoint(db: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
    """body(db) inside the open transaction, undone alone if it raises."""
    db.execute("SAVEPOINT one_write")
    try:
        result = body(db)
    except BaseException:
        db.execute("ROLLBACK TO one_write")
        db.execute("RELEASE one_write")
        raise
    db.execute("RELEASE one_write")
    return result


class _Write:
    """One caller's write waiting for, or done by, a group commit."""

    __slots__ = ("body", "result", "error", "done")

    def __init__(self, body: Callable[[sqlite3.Connection], object]) -> None:
        self.body = body
        self.result: object = None
        self.error: BaseException | None = None
        self.done = False


class GroupCommit:
    """The writes of one process, committed together (see the module's docstring).

    Flat combining, no thread of its own: a caller queues its write, then takes the leader
    lock; if a leader before it already committed the write, it is done; otherwise it runs
    every queued write (its own among them) in one transaction. A write is only ever taken
    from the queue by a thread holding the lock, so none is lost between two leaders."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog   # its connection is used by the leader of the moment only
        self._leader = threading.Lock()
        self._leading = 0         # the thread running a batch (0: none)
        self._queue: collections.deque[_Write] = collections.deque()

    def run(self, body: Callable[[sqlite3.Connection], T]) -> T:
        if self._leading == threading.get_ident():
            return self._nested(body)
        write = _Write(body)
        self._queue.append(write)
        while not write.done:
            with self._leader:
                if write.done:
                    break
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                self._leading = threading.get_ident()
                try:
                    self._commit(batch)
                finally:
                    self._leading = 0
        if write.error is not None:
            raise write.error
        return write.result  # type: ignore[return-value]

    def _nested(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """A write made by a write of the batch (recovery forgets a lost object's row inside
        the transaction that holds the object): it joins that transaction."""
        return _in_savepoint(self._catalog.db, body)

    def _commit(self, batch: list[_Write]) -> None:
        try:
            with self._catalog.write() as db:
                for write in batch:
                    try:
                        write.result = _in_savepoint(db, write.body)
                    except BaseException as exc:
                        write.error = _typed(exc)
        except BaseException as exc:
            # BEGIN, a savepoint or COMMIT failed: nothing of the batch is recorded, and every
            # write that had not failed on its own learns why.
            for write in batch:
                if write.error is None:
                    write.error = exc
        finally:
            for write in batch:
                write.done = True
                write.body = None  # type: ignore[assignment]  # (its closure may hold big objects)


class CatalogPool:
    """One `Catalog` per thread for reads, opened on first use; writes go through one
    `GroupCommit` per pool (a process has one pool per data dir)."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self._local = threading.local()
        self._all: list[Catalog] = []
        self._lock = threading.Lock()
        self._writer: Catalog | None = None
        self._group: GroupCommit | None = None

    def get(self) -> Catalog:
        catalog = getattr(self._local, "catalog", None)
        if catalog is None:
            catalog = Catalog(self.data_dir)
            with self._lock:
                if self._group is None:
                    self._writer = Catalog(self.data_dir)
                    self._group = GroupCommit(self._writer)
                    self._all.append(self._writer)
                self._all.append(catalog)
            catalog.group = self._group
            self._local.catalog = catalog
        return catalog

    def close(self) -> None:
        with self._lock:
            for catalog in self._all:
                with contextlib.suppress(Exception):
                    catalog.close()
            self._all.clear()


class SqliteBackend:
    """The embedded catalog: `catalog.db` in the data directory, for one node."""

    name = "sqlite"
    shares_data_dir = False

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir

    def describe(self) -> str:
        return f"catalog {os.path.join(self.data_dir, FILE_NAME)}"

    def inspect(self) -> tuple[CatalogState, str]:
        return inspect_catalog(self.data_dir)

    def prepare(self) -> None:
        Catalog.prepare(self.data_dir)

    def catalog_id(self) -> str:
        return Catalog.prepared_id(self.data_dir)

    def pool(self) -> CatalogPool:
        return CatalogPool(self.data_dir)
