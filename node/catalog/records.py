"""What the catalog holds, whatever holds the catalog: session and object records, how they
map to table rows, and the pure rules both backends share (the prefix range of a listing).
No I/O here.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from typing import Sequence

from node.errors import TooManySessions
from node.session_rules import State

#: Files the catalog has let go of, to free: (kind, name), kind being "parts" or "objects".
FileRef = tuple[str, str]


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    object_id: str
    generation: str
    file_name: str
    size: int
    sha256: str
    content_type: str
    metadata: dict[str, str]
    created_at_ms: int
    disk_name: str

    def to_json(self) -> str:
        # (not dataclasses.asdict: it deep-copies the metadata, a cost on every commit's row)
        fields = {f: getattr(self, f) for f in self.__slots__}
        return json.dumps(fields, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "ObjectRecord":
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class SessionRecord:
    upload_id: str
    object_id: str
    file_name: str
    file_size: int
    chunk_size: int
    uploaded_offset: int
    sha256: str
    state: State
    content_type: str
    metadata: dict[str, str]
    if_absent: bool
    if_generation_match: str
    client: str
    created_at_ms: int
    updated_at_ms: int
    expires_at_ms: int
    object: ObjectRecord | None = None
    #: A sliced session (parallel upload): how many slices it has (0: a plain session).
    slices: int = 0
    #: A slice: the sliced session it belongs to ("" otherwise), and where its bytes begin.
    parent_id: str = ""
    slice_offset: int = 0

    @property
    def is_slice(self) -> bool:
        return bool(self.parent_id)

    def replace(self, **changes) -> "SessionRecord":
        return dataclasses.replace(self, **changes)


SESSION_COLUMNS = [f.name for f in dataclasses.fields(SessionRecord)]
#: Columns added after the first schema, with their SQL (the same in both dialects): a catalog
#: made before them gains them when a node opens it (`ALTER TABLE ... ADD COLUMN`).
SESSION_COLUMNS_ADDED = {
    "slices": "INTEGER NOT NULL DEFAULT 0",
    "parent_id": "TEXT NOT NULL DEFAULT ''",
    "slice_offset": "BIGINT NOT NULL DEFAULT 0",
}
OBJECT_COLUMNS = [f.name for f in dataclasses.fields(ObjectRecord)]


def session_from_row(row: Sequence) -> SessionRecord:
    values = dict(zip(SESSION_COLUMNS, row))
    values["state"] = State(values["state"])
    values["metadata"] = json.loads(values["metadata"])
    values["if_absent"] = bool(values["if_absent"])
    values["object"] = ObjectRecord.from_json(values["object"]) if values["object"] else None
    return SessionRecord(**values)


def object_from_row(row: Sequence) -> ObjectRecord:
    values = dict(zip(OBJECT_COLUMNS, row))
    values["metadata"] = json.loads(values["metadata"])
    return ObjectRecord(**values)


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string above every string that starts with `prefix` (None: no bound).

    The last character that can be incremented is; characters after it are dropped (every
    string starting with "ab\U0010FFFF" is below "ac"). Surrogates are skipped: they cannot be
    stored, and a bound made of one would fail the query.
    """
    while prefix:
        code = ord(prefix[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            return prefix[:-1] + chr(code)
        prefix = prefix[:-1]
    return None


def prefix_range(prefix: str, mark: str = "?") -> tuple[str, list]:
    """A WHERE clause (and its arguments) selecting object_ids that start with `prefix`, as an
    index range rather than a LIKE, so a listing reads only the rows it returns. `mark` is the
    backend's parameter placeholder ("?" for SQLite, "%s" for psycopg)."""
    upper = prefix_upper_bound(prefix)
    if upper is None:
        return f"object_id >= {mark}", [prefix]
    return f"object_id >= {mark} AND object_id < {mark}", [prefix, upper]


def check_session_caps(new: int, active: int, max_active: int, mine: int,
                       max_per_client: int) -> None:
    """Refuse `new` more ACTIVE sessions (a sliced session and its slices: each holds a part
    file and a row) when that would pass a limit (0 = none)."""
    if max_active and active + new > max_active:
        raise TooManySessions("the node has as many active sessions as it allows",
                              max_sessions=max_active)
    if max_per_client and mine + new > max_per_client:
        raise TooManySessions("this client has as many active sessions as it may",
                              max_sessions_per_client=max_per_client)


def session_values(rec: SessionRecord) -> tuple:
    """A session record as the values of a row, in SESSION_COLUMNS order."""
    values = {column: getattr(rec, column) for column in SESSION_COLUMNS}  # (asdict deep-copies)
    values["state"] = int(rec.state)
    values["metadata"] = json.dumps(rec.metadata, separators=(",", ":"))
    values["if_absent"] = int(rec.if_absent)
    values["object"] = rec.object.to_json() if rec.object else None
    return tuple(values[c] for c in SESSION_COLUMNS)


def object_values(obj: ObjectRecord) -> tuple:
    """An object record as the values of a row, in OBJECT_COLUMNS order."""
    values = {column: getattr(obj, column) for column in OBJECT_COLUMNS}
    values["metadata"] = json.dumps(obj.metadata, separators=(",", ":"))
    return tuple(values[c] for c in OBJECT_COLUMNS)


class CatalogState(enum.Enum):
    MISSING = "missing"
    EMPTY = "empty"       # zero bytes, or a database without our tables
    DAMAGED = "damaged"   # not a database SQLite can read
    READY = "ready"
