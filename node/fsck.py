"""`mini-oss fsck`: what a data directory holds, and a lost catalog rebuilt from its files.

Why: the catalog is the truth about which objects exist; `objects/` and `index/` only mirror
it. When `catalog.db` is missing, empty, damaged or not this directory's own, the node refuses
to start (node.datadir says why), and an operator needs two things: a report that touches
nothing, and a way to get the objects back.

`check(data_dir, verify=...)` is the report. It never writes: the catalog is opened with
SQLite's `mode=ro` (plus `immutable=1` when there is no `-wal` file, since a read-only
connection would otherwise leave `-wal` and `-shm` files behind), a missing catalog is not
created, no lock is taken, so it runs beside a live node too. It compares every object row
with its file in `objects/` (and with `verify`, its size and SHA-256) and its `index/` entry,
and lists what no row accounts for: index entries, object files, part files without an ACTIVE
session, and whatever the node set aside in `quarantine/`. Each problem says what the node will
do about it at its next start, or what the operator must do.

`rebuild_catalog(data_dir, force=...)` writes a new catalog from `index/` and `objects/`,
holding the data directory's lock (so never under a running node): every `index/<object_id>`
whose target `objects/<disk_name>` exists becomes a row. The disk name is
`<object_id>_<stem>_<upload_id><ext>` (node.names.object_file_name), so the generation is the
upload id in it and the file name is stem + ext (the stem as it was shortened on disk, if it
was); size and SHA-256 are computed from the bytes, `created_at_ms` is the file's mtime;
content type and user metadata are lost, unless the old catalog is still readable and agrees
about that version (then they are kept). Object files without an index entry are reported, not
adopted: the node's recovery puts them in `quarantine/objects/`. Sessions are not rebuilt:
their parts go to `quarantine/parts/` at the next start. The catalog is built in a temporary
directory inside the data directory with the node's own schema (`Catalog.prepare`), then
`node.datadir.install_catalog` swaps it in (keeping the old file as
`catalog.db.damaged-<time>`) and records its identity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import sqlite3
import stat
import tempfile
import urllib.parse
from dataclasses import dataclass, field

from node import names
from node.catalog import FILE_NAME as CATALOG_FILE
from node.catalog import OBJECT_COLUMNS, Catalog, ObjectRecord
from node.catalog.records import object_from_row, object_values
from node.errors import InvalidName
from node.session_rules import State
from node.storage import INDEX, OBJECTS, PARTS, QUARANTINE

HOLDER = "mini-oss fsck --rebuild-catalog"
READ_BLOCK = 1 << 20
# One candidate for the "_<upload_id>" in a disk name (looked for at every position).
_UPLOAD_ID_AT = re.compile(r"(?=_([0-9a-f]{%d}))" % names.UPLOAD_ID_CHARS)

# Catalog states (as node.catalog.CatalogState, found here without writing anything).
MISSING, EMPTY, DAMAGED, OK = "missing", "empty", "damaged", "ok"


class FsckError(RuntimeError):
    """fsck cannot do what it was asked; the message is one line saying why."""


@dataclass(frozen=True)
class Problem:
    kind: str     # catalog, object_missing, object_size, object_sha256, index, orphan_object,
    #               orphan_part, session, quarantine, unreadable
    path: str     # relative to the data directory
    message: str

    def line(self) -> str:
        """One line, whatever the names hold (a file name may hold a newline)."""
        path = self.path if self.path.isprintable() else repr(self.path)
        return " ".join(f"{path}: {self.message}".split())


@dataclass
class Report:
    data_dir: str
    catalog: str = MISSING
    catalog_detail: str = ""
    verified: bool = False
    objects: int = 0
    index_entries: int = 0
    object_files: int = 0
    part_files: int = 0
    active_sessions: int = 0
    to_free: int = 0          # files the catalog let go of that the node frees at its start
    rebuildable: int = 0      # with an unusable catalog: index entries a rebuild would adopt
    quarantine: dict[str, list[str]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems

    def add(self, kind: str, path: str, message: str) -> None:
        self.problems.append(Problem(kind, path, message))

    def summary(self) -> str:
        catalog = self.catalog + (f" ({self.catalog_detail})" if self.catalog_detail else "")
        checked = "verified" if self.verified else "checked"
        text = (f"fsck {self.data_dir}: catalog {catalog}; {self.objects} objects {checked}, "
                f"{self.index_entries} index entries, {self.object_files} object files, "
                f"{self.part_files} part files, {self.active_sessions} active sessions")
        if self.catalog not in (OK,) and self.rebuildable:
            text += f"; {self.rebuildable} objects can be rebuilt from index/"
        quarantined = sum(len(v) for v in self.quarantine.values())
        if quarantined:
            text += f"; {quarantined} files in quarantine/"
        problems = len(self.problems)
        return text + f"; {problems} problem{'s' if problems != 1 else ''}"

    def to_dict(self) -> dict:
        return {
            "data_dir": self.data_dir, "clean": self.clean,
            "catalog": {"state": self.catalog, "detail": self.catalog_detail,
                        "path": os.path.join(self.data_dir, CATALOG_FILE)},
            "verified": self.verified, "objects": self.objects,
            "index_entries": self.index_entries, "object_files": self.object_files,
            "part_files": self.part_files, "active_sessions": self.active_sessions,
            "to_free": self.to_free, "rebuildable": self.rebuildable,
            "quarantine": self.quarantine,
            "problems": [dataclasses.asdict(p) for p in self.problems],
        }


# -- reading the catalog without changing anything ----------------------------------------------


@dataclass
class CatalogView:
    state: str
    detail: str = ""
    catalog_id: str | None = None
    objects: list[ObjectRecord] = field(default_factory=list)
    active: list[tuple[str, str, str]] = field(default_factory=list)  # upload_id, object_id, file_name
    sessions: int = 0
    garbage: set[tuple[str, str]] = field(default_factory=set)


def read_catalog(data_dir: str) -> CatalogView:
    """The catalog of `data_dir` as it is: its state, and its rows when it is readable."""
    path = os.path.join(data_dir, CATALOG_FILE)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return CatalogView(MISSING)
    if not stat.S_ISREG(st.st_mode):
        return CatalogView(DAMAGED, "it is not a regular file")
    if st.st_size == 0:
        return CatalogView(EMPTY, "zero bytes")
    try:
        db = _open_read_only(path)
    except sqlite3.Error as exc:
        return CatalogView(DAMAGED, str(exc))
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return CatalogView(EMPTY, "no tables")
        if not {"sessions", "objects", "node_facts"} <= tables:
            return CatalogView(DAMAGED, "not a mini-oss catalog (tables missing)")
        check = [r[0] for r in db.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            return CatalogView(DAMAGED, f"SQLite quick_check: {check[0]}")
        view = CatalogView(OK)
        rows = db.execute(f"SELECT {', '.join(OBJECT_COLUMNS)} FROM objects ORDER BY object_id")
        view.objects.extend(object_from_row(row) for row in rows)
        view.active = [tuple(r) for r in db.execute(
            "SELECT upload_id, object_id, file_name FROM sessions WHERE state = ?",
            (int(State.ACTIVE),))]
        view.sessions = db.execute("SELECT count(*) FROM sessions").fetchone()[0]
        found = db.execute("SELECT value FROM node_facts WHERE key = 'catalog_id'").fetchone()
        view.catalog_id = str(found[0]) if found else None
        if "garbage" in tables:
            view.garbage = {(str(k), str(n)) for k, n in db.execute("SELECT kind, name FROM garbage")}
        return view
    except (sqlite3.Error, ValueError, TypeError) as exc:  # unreadable pages, bad rows
        return CatalogView(DAMAGED, str(exc) or type(exc).__name__)
    finally:
        db.close()


def _open_read_only(path: str) -> sqlite3.Connection:
    """A read-only connection that leaves no file behind. Without a `-wal` file the database
    file holds everything (`immutable=1`: no -shm/-wal are made); with one (a node is running,
    or one crashed) SQLite must read it through them."""
    immutable = "" if os.path.exists(path + "-wal") else "&immutable=1"
    return sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro{immutable}",
                           uri=True, timeout=10)


# -- the report ------------------------------------------------------------------------------


def check(data_dir: str, *, verify: bool = False) -> Report:
    """Look at everything in `data_dir`, change nothing."""
    from node.datadir import read_catalog_id, repair_hint

    if not os.path.isdir(data_dir):
        raise FsckError(f"data dir {data_dir} does not exist or is not a directory")
    report = Report(data_dir=data_dir, verified=verify)
    index = _listdir(data_dir, INDEX)
    objects = _listdir(data_dir, OBJECTS)
    parts = _listdir(data_dir, PARTS)
    report.index_entries, report.object_files, report.part_files = len(index), len(objects), len(parts)
    for kind in sorted(_listdir(data_dir, QUARANTINE)):
        report.quarantine[kind] = sorted(_listdir(data_dir, os.path.join(QUARANTINE, kind)))
        for name in report.quarantine[kind]:
            report.add("quarantine", os.path.join(QUARANTINE, kind, name),
                       "set aside by the node (no catalog row knew it): restore or delete it")

    view = read_catalog(data_dir)
    report.catalog, report.catalog_detail = view.state, view.detail
    recorded = read_catalog_id(data_dir)
    if view.state != OK:
        content = bool(index or objects or parts)
        if view.state == DAMAGED or content or recorded is not None:
            entries, _skipped = scan_index(data_dir)
            report.rebuildable = len(entries)
            what = {MISSING: "is missing", EMPTY: f"is empty ({view.detail})",
                    DAMAGED: f"cannot be read ({view.detail})"}[view.state]
            report.add("catalog", CATALOG_FILE,
                       f"{what} but the data dir holds {len(objects)} object files, "
                       f"{len(index)} index entries and {len(parts)} part files; the node will "
                       f"not start; repair: {repair_hint(data_dir)}")
        return report
    if recorded is not None and view.catalog_id is not None and recorded != view.catalog_id:
        report.add("catalog", CATALOG_FILE,
                   f"its id {view.catalog_id} is not the data dir's ({recorded}, in catalog-id): "
                   f"the node will not start; put the right catalog back, or "
                   f"{repair_hint(data_dir)}")

    report.objects = len(view.objects)
    report.active_sessions = len(view.active)
    for obj in view.objects:
        _check_object(data_dir, obj, verify, report)
    known_ids = {o.object_id for o in view.objects}
    for name in sorted(index - known_ids):
        report.add("index", os.path.join(INDEX, name),
                   "no object row (the node removes it at start)")
    live_objects = {o.disk_name for o in view.objects}
    active = [(uid, names.part_file_name(oid, fname, uid), names.object_file_name(oid, fname, uid))
              for uid, oid, fname in view.active if _valid_disk_inputs(oid, fname, uid)]
    promoted = {disk: uid for uid, _part, disk in active}
    for name in sorted(objects - live_objects):
        if (OBJECTS, name) in view.garbage:
            report.to_free += 1
        elif name in promoted:
            report.add("orphan_object", os.path.join(OBJECTS, name),
                       f"an unfinished commit of session {promoted[name]} (the node moves it "
                       f"back to parts/ at start)")
        else:
            report.add("orphan_object", os.path.join(OBJECTS, name),
                       "no object row references it (the node moves it to quarantine/objects/)")
    live_parts = {part for _uid, part, _disk in active}
    for name in sorted(parts - live_parts):
        if (PARTS, name) in view.garbage:
            report.to_free += 1
        elif names.is_put_file_name(name):
            report.add("orphan_part", os.path.join(PARTS, name),
                       "a one-call put in flight, or cut short (the node removes it at start "
                       "when no process holds it: it was never acknowledged)")
        else:
            report.add("orphan_part", os.path.join(PARTS, name),
                       "no ACTIVE session (the node moves it to quarantine/parts/, or removes it "
                       "if empty)")
    for uid, part, disk in active:
        if part not in parts and disk not in objects:
            report.add("session", os.path.join(PARTS, part),
                       f"the part file of ACTIVE session {uid} is missing (the node restarts "
                       f"the upload from 0)")
    return report


def _check_object(data_dir: str, obj: ObjectRecord, verify: bool, report: Report) -> None:
    rel = os.path.join(OBJECTS, obj.disk_name)
    path = os.path.join(data_dir, rel)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        report.add("object_missing", rel, f"the file of object {obj.object_id} (generation "
                                          f"{obj.generation}) is missing (the node forgets the "
                                          f"object at start)")
        return
    if not stat.S_ISREG(st.st_mode):
        report.add("object_missing", rel, f"the file of object {obj.object_id} is not a regular file")
        return
    target = _index_target(data_dir, obj.object_id)
    if target != obj.disk_name:
        what = "is missing" if target is None else f"points to {target!r}"
        report.add("index", os.path.join(INDEX, obj.object_id),
                   f"{what}, not to {obj.disk_name!r} (the node repairs it at start)")
    if not verify:
        return
    if st.st_size != obj.size:
        report.add("object_size", rel, f"object {obj.object_id} holds {st.st_size} bytes, its "
                                       f"row says {obj.size}")
        return
    try:
        size, digest = file_digest(path)
    except OSError as exc:
        report.add("unreadable", rel, f"cannot read object {obj.object_id}: {exc.strerror or exc}")
        return
    if digest != obj.sha256 or size != obj.size:
        report.add("object_sha256", rel, f"object {obj.object_id}: the bytes hash to {digest}, "
                                         f"its row says {obj.sha256}")


# -- what index/ and objects/ say -------------------------------------------------------------


@dataclass(frozen=True)
class IndexEntry:
    object_id: str
    disk_name: str
    file_name: str
    upload_id: str


def scan_index(data_dir: str) -> tuple[list[IndexEntry], list[Problem]]:
    """Every index entry that names an existing object file, parsed; and why the others do not."""
    entries: list[IndexEntry] = []
    skipped: list[Problem] = []
    objects_dir = os.path.realpath(os.path.join(data_dir, OBJECTS))
    for object_id in sorted(_listdir(data_dir, INDEX)):
        rel = os.path.join(INDEX, object_id)
        try:
            names.validate_object_id(object_id)
        except InvalidName:
            skipped.append(Problem("index", rel, "not an object id (a leftover): skipped"))
            continue
        link = os.path.join(data_dir, rel)
        try:
            target = os.readlink(link)
        except OSError:
            skipped.append(Problem("index", rel, "not a symlink: skipped"))
            continue
        disk_name = os.path.basename(target)
        path = os.path.join(data_dir, OBJECTS, disk_name)
        if os.path.realpath(os.path.dirname(os.path.join(data_dir, INDEX, target))) != objects_dir:
            skipped.append(Problem("index", rel, f"points outside objects/ ({target!r}): skipped"))
            continue
        try:
            regular = stat.S_ISREG(os.lstat(path).st_mode)
        except FileNotFoundError:
            skipped.append(Problem("object_missing", rel,
                                   f"its file objects/{disk_name} is missing: skipped"))
            continue
        if not regular:
            skipped.append(Problem("object_missing", rel, f"objects/{disk_name} is not a regular "
                                                          "file: skipped"))
            continue
        parsed = parse_object_file_name(object_id, disk_name)
        if parsed is None:
            skipped.append(Problem("index", rel, f"objects/{disk_name} is not a name the node "
                                                 "makes for this object: skipped"))
            continue
        entries.append(IndexEntry(object_id, disk_name, *parsed))
    return entries, skipped


def parse_object_file_name(object_id: str, disk_name: str) -> tuple[str, str] | None:
    """(file_name, upload_id) from `<object_id>_<stem>_<upload_id><ext>`, or None.

    The stem may itself hold "_" and hex: a candidate split is taken when the name the node
    would make from it is exactly `disk_name` (at most one split can be: see the tests); when
    none is (only when shortening left no stem at all), the split with that empty stem. The
    file name is the one on disk: shortened if the disk name was.
    """
    head = object_id + "_"
    if not disk_name.startswith(head):
        return None
    rest = disk_name[len(head):]
    fallback = None
    for match in _UPLOAD_ID_AT.finditer(rest):
        upload_id = match.group(1)
        stem, ext = rest[:match.start()], rest[match.start() + 1 + len(upload_id):]
        if ext and (not ext.startswith(".") or "." in ext[1:]):
            continue
        file_name = stem + ext
        try:
            names.validate_file_name(file_name)
            exact = names.object_file_name(object_id, file_name, upload_id) == disk_name
        except InvalidName:
            continue
        if exact:
            return file_name, upload_id
        if match.start() == 0:  # an empty stem: the extension alone (cut) is the file name
            fallback = (file_name, upload_id)
    return fallback


# -- the rebuild -------------------------------------------------------------------------------


@dataclass
class RebuildResult:
    data_dir: str
    objects: list[ObjectRecord] = field(default_factory=list)
    kept_from_old: int = 0
    skipped: list[Problem] = field(default_factory=list)
    unindexed: list[str] = field(default_factory=list)   # objects/ files no entry names
    parts: list[str] = field(default_factory=list)        # parts/ files, now without a session
    kept: str | None = None                               # the old catalog, set aside

    def lines(self) -> list[str]:
        notes = list(self.skipped)
        notes += [Problem("orphan_object", os.path.join(OBJECTS, n), "no index entry names it: "
                          "not adopted (the node moves it to quarantine/objects/)")
                  for n in self.unindexed]
        notes += [Problem("orphan_part", os.path.join(PARTS, n), "its session is not rebuilt "
                          "(the node moves it to quarantine/parts/)") for n in self.parts]
        out = [p.line() for p in notes]
        old = f"; the old catalog is kept as {self.kept}" if self.kept else ""
        lost = len(self.objects) - self.kept_from_old
        out.append(f"rebuilt {os.path.join(self.data_dir, CATALOG_FILE)}: {len(self.objects)} "
                   f"objects ({lost} without their content type and metadata){old}")
        return out

    def to_dict(self) -> dict:
        return {
            "data_dir": self.data_dir, "kept": self.kept,
            "objects": [{"object_id": o.object_id, "generation": o.generation,
                         "file_name": o.file_name, "size": o.size, "sha256": o.sha256}
                        for o in self.objects],
            "kept_from_old": self.kept_from_old,
            "skipped": [dataclasses.asdict(p) for p in self.skipped],
            "unindexed": self.unindexed, "parts": self.parts,
        }


def rebuild_catalog(data_dir: str, *, force: bool = False) -> RebuildResult:
    """Replace the catalog with one rebuilt from index/ and objects/ (see the module's doc).

    Raises FsckError when the data dir is missing or its catalog is healthy (without `force`),
    and node.datadir.DataDirBusy when a node holds the data directory.
    """
    from node.datadir import install_catalog, lock_data_dir, read_catalog_id

    if not os.path.isdir(data_dir):
        raise FsckError(f"data dir {data_dir} does not exist or is not a directory")
    with lock_data_dir(data_dir, HOLDER):
        view = read_catalog(data_dir)
        own = view.catalog_id is None or view.catalog_id == read_catalog_id(data_dir)
        if view.state == OK and (view.objects or view.sessions) and own and not force:
            raise FsckError(
                f"catalog {os.path.join(data_dir, CATALOG_FILE)} is readable and holds "
                f"{len(view.objects)} objects and {view.sessions} sessions: not replacing it "
                f"(see `mini-oss fsck --data-dir {data_dir}`; --force rebuilds anyway, keeping "
                f"it as {CATALOG_FILE}.damaged-<time>)")
        result = RebuildResult(data_dir=data_dir)
        entries, result.skipped = scan_index(data_dir)
        old = {o.object_id: o for o in view.objects} if view.state == OK else {}
        for entry in entries:
            record = _record(data_dir, entry, old.get(entry.object_id))
            if record is None:
                result.skipped.append(Problem("unreadable", os.path.join(OBJECTS, entry.disk_name),
                                              "cannot be read: skipped"))
                continue
            result.objects.append(record)
            if record is old.get(entry.object_id):
                result.kept_from_old += 1
        named = {e.disk_name for e in entries}
        result.unindexed = sorted(_listdir(data_dir, OBJECTS) - named)
        result.parts = sorted(_listdir(data_dir, PARTS))
        built_dir = tempfile.mkdtemp(prefix=".fsck-rebuild-", dir=data_dir)
        try:
            _write_catalog(built_dir, result.objects)
            result.kept = install_catalog(data_dir, os.path.join(built_dir, CATALOG_FILE))
        finally:
            shutil.rmtree(built_dir, ignore_errors=True)
        return result


def _record(data_dir: str, entry: IndexEntry, old: ObjectRecord | None) -> ObjectRecord | None:
    path = os.path.join(data_dir, OBJECTS, entry.disk_name)
    try:
        size, digest = file_digest(path)
        mtime_ms = int(os.stat(path).st_mtime * 1000)
    except OSError:
        return None
    record = ObjectRecord(object_id=entry.object_id, generation=entry.upload_id,
                          file_name=entry.file_name, size=size, sha256=digest, content_type="",
                          metadata={}, created_at_ms=mtime_ms, disk_name=entry.disk_name)
    if old is not None and (old.disk_name, old.generation, old.size, old.sha256) == (
            record.disk_name, record.generation, size, digest):
        return old  # the old catalog still knows this very version: keep all it knew
    return record


def _write_catalog(directory: str, objects: list[ObjectRecord]) -> None:
    """A catalog file in `directory` with the node's schema and these object rows, complete in
    its main file (no -wal left)."""
    Catalog.prepare(directory)
    catalog = Catalog(directory)
    try:
        sql = (f"INSERT INTO objects ({', '.join(OBJECT_COLUMNS)})"
               f" VALUES ({', '.join('?' * len(OBJECT_COLUMNS))})")
        with catalog.write() as db:
            db.executemany(sql, [object_values(obj) for obj in objects])
        catalog.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        stored = catalog.all_objects()
    finally:
        catalog.close()
    if stored != objects:
        raise FsckError("the rebuilt catalog does not read back as written")
    if os.path.exists(os.path.join(directory, CATALOG_FILE + "-wal")):
        raise FsckError("the rebuilt catalog was not checkpointed into its file")


# -- helpers -----------------------------------------------------------------------------------


def file_digest(path: str) -> tuple[int, str]:
    """(size, SHA-256 hex) of the file's bytes."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(READ_BLOCK):
            hasher.update(block)
            size += len(block)
    return size, hasher.hexdigest()


def _listdir(data_dir: str, sub: str) -> set[str]:
    try:
        return set(os.listdir(os.path.join(data_dir, sub)))
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _index_target(data_dir: str, object_id: str) -> str | None:
    try:
        return os.path.basename(os.readlink(os.path.join(data_dir, INDEX, object_id)))
    except OSError:
        return None


def _valid_disk_inputs(object_id: str, file_name: str, upload_id: str) -> bool:
    try:
        names.object_file_name(object_id, file_name, upload_id)
    except InvalidName:
        return False
    return True
