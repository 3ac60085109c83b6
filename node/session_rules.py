"""The upload session rules, as data and pure functions (in the manner of h11's `_state.py`).

Why: whether a chunk is written, trimmed, ignored or refused, when a session is complete, which
state changes are legal and when a session expires are the heart of resumable uploads. Kept
here with no gRPC, no file access and no clock, they are tested directly and with Hypothesis,
and the servicer, the catalog and storage all obey the one copy.

How: a session is a `State` plus numbers the caller keeps (`uploaded_offset`, `file_size`,
timestamps). `TRANSITIONS` lists every legal (state, event) pair; `transition` looks the pair up
and raises the typed error of `ILLEGAL` for any other. `plan_chunk` turns one arriving chunk
into a `ChunkPlan` (what to drop, what to write where, the offset afterwards) or raises the
error API.md names for it; the caller does the writing and keeps the new offset. Time enters
only as unix milliseconds passed in by the caller. Unknown events or states are bugs in the
caller (ValueError), not client errors.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from node.errors import (
    ChunkTooLarge,
    GenerationMismatch,
    InvalidArgument,
    ObjectExists,
    OffsetMismatch,
    OssError,
    PastEnd,
    SessionCommitted,
    SessionNotFound,
)


class State(enum.IntEnum):
    """Session states; the numbers equal the proto's `UploadSession.State`."""

    ACTIVE = 1
    COMMITTED = 2
    ABORTED = 3


# --- state changes -------------------------------------------------------------------------

COMMIT = "commit"            # uploaded_offset reached file_size, hash and preconditions hold
ABORT = "abort"              # AbortUploadSession
EXPIRE = "expire"            # idle past expires_at_unix_ms (the sweeper)
FAIL_COMMIT = "fail_commit"  # the commit's hash or precondition failed: the session is aborted
EVENTS = frozenset({COMMIT, ABORT, EXPIRE, FAIL_COMMIT})

#: Every legal (state, event) pair and the state it leads to.
TRANSITIONS: Mapping[tuple[State, str], State] = MappingProxyType({
    (State.ACTIVE, COMMIT): State.COMMITTED,
    (State.ACTIVE, ABORT): State.ABORTED,
    (State.ACTIVE, EXPIRE): State.ABORTED,
    (State.ACTIVE, FAIL_COMMIT): State.ABORTED,
    # "an ABORTED one answers OK again": aborting twice is idempotent.
    (State.ABORTED, ABORT): State.ABORTED,
})

#: The error any other event meets in each state (every event is legal on ACTIVE).
ILLEGAL: Mapping[State, type[OssError]] = MappingProxyType({
    State.COMMITTED: SessionCommitted,
    State.ABORTED: SessionNotFound,
})

#: What an `Upload` stream does with its chunks, by session state (ABORTED: SessionNotFound).
DISPOSITIONS: Mapping[State, str] = MappingProxyType({
    State.ACTIVE: "write",     # plan each chunk with plan_chunk and write it
    State.COMMITTED: "replay",  # chunks are duplicates; answer with the committed object
})


def as_state(value: int) -> State:
    """`value` (a State or its number) as a State; ValueError for anything else (a bug)."""
    try:
        return State(value)
    except ValueError:
        raise ValueError(f"not an upload session state: {value!r}") from None


def transition(state: State, event: str) -> State:
    """The state after `event`, or the typed error for an illegal one (see module doc)."""
    state = as_state(state)
    if event not in EVENTS:
        raise ValueError(f"unknown upload session event {event!r}")
    new = TRANSITIONS.get((state, event))
    if new is None:
        raise ILLEGAL[state](f"cannot {event.replace('_', ' ')} an upload session that is "
                             f"{state.name}", state=state.name)
    return new


def upload_disposition(state: State) -> str:
    """What an Upload stream does: 'write' (ACTIVE), 'replay' (COMMITTED); ABORTED is SessionNotFound."""
    state = as_state(state)
    disposition = DISPOSITIONS.get(state)
    if disposition is None:
        raise SessionNotFound(f"the upload session is {state.name}", state=state.name)
    return disposition


# --- chunks --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """What to do with one chunk: drop `skip` bytes from its front, write the next `length`
    bytes at file offset `write_at`; `uploaded_offset` is `new_offset` afterwards."""

    skip: int
    length: int
    write_at: int
    new_offset: int

    @property
    def duplicate(self) -> bool:
        """Nothing new: the chunk is accepted and ignored."""
        return self.length == 0


def plan_chunk(*, uploaded_offset: int, file_size: int, offset: int, length: int,
               max_chunk_size: int) -> ChunkPlan:
    """Plan a chunk of `length` bytes at `offset` for a session at `uploaded_offset`.

    Checked in this order: ChunkTooLarge, InvalidArgument (negative offset or length), PastEnd
    (any byte past file_size), OffsetMismatch (a gap above uploaded_offset). A chunk wholly
    below uploaded_offset (or empty at it) is a duplicate; one that straddles it is trimmed.
    """
    if not 0 <= uploaded_offset <= file_size:
        raise ValueError(f"uploaded_offset {uploaded_offset} outside [0, {file_size}]")
    if length > max_chunk_size:
        raise ChunkTooLarge(f"chunk of {length} bytes is larger than the node's maximum of "
                            f"{max_chunk_size}", max_chunk_size=max_chunk_size, length=length)
    if offset < 0:
        raise InvalidArgument(f"chunk offset {offset} is negative", field="offset")
    if length < 0:
        raise InvalidArgument(f"chunk length {length} is negative", field="data")
    end = offset + length
    if end > file_size:
        raise PastEnd(f"chunk [{offset}, {end}) reaches past the end of the object "
                      f"({file_size} bytes)", file_size=file_size, offset=offset, length=length)
    if offset > uploaded_offset:
        raise OffsetMismatch(f"chunk starts at {offset} but the upload is at {uploaded_offset}; "
                             f"resend from {uploaded_offset}", expected_offset=uploaded_offset,
                             offset=offset)
    if end <= uploaded_offset:
        return ChunkPlan(skip=length, length=0, write_at=uploaded_offset,
                         new_offset=uploaded_offset)
    skip = uploaded_offset - offset
    return ChunkPlan(skip=skip, length=length - skip, write_at=uploaded_offset, new_offset=end)


def is_complete(uploaded_offset: int, file_size: int) -> bool:
    """True once every byte of the object has arrived (time to verify and commit)."""
    return uploaded_offset >= file_size


#: The smallest chunk size advice is clamped to (API.md: "clamped to 4 KiB .. max_chunk_size").
MIN_CHUNK_SIZE = 4 * 1024


def advise_chunk_size(requested: int, default: int, maximum: int) -> int:
    """A chunk size from a client's advice: 0 = `default`, others clamped to [4 KiB, maximum]."""
    if requested < 0:
        raise InvalidArgument(f"chunk_size {requested} is negative", field="chunk_size")
    if requested == 0:
        return default
    return max(MIN_CHUNK_SIZE, min(requested, maximum))


# --- slices (parallel uploads) --------------------------------------------------------------

#: The most slices one sliced session is cut into (more asked for: this many).
MAX_SLICES = 64


def plan_slices(file_size: int, requested: int, chunk_size: int) -> list[tuple[int, int]]:
    """(offset, length) of each slice of a sliced session of `file_size` bytes, in order.

    Each slice is whole chunks (the last may be shorter), so every slice's stream sends full
    chunks; an object too small for two slices gets none (`[]`: a plain session). The node
    makes fewer slices than `requested` when there are fewer chunks, and at most MAX_SLICES.
    """
    if requested < 0:
        raise InvalidArgument(f"slices {requested} is negative", field="slices")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size {chunk_size} must be positive")
    chunks = -(-file_size // chunk_size)
    count = min(requested, chunks, MAX_SLICES)
    if count <= 1:
        return []
    step = -(-chunks // count) * chunk_size
    return [(start, min(step, file_size - start)) for start in range(0, file_size, step)]


# --- hashes --------------------------------------------------------------------------------

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def normalize_sha256(value: str) -> str:
    """The hash in lowercase: '' stays ''; 64 hex characters of any case; else InvalidArgument."""
    if not isinstance(value, str):
        raise InvalidArgument(f"sha256 must be a string, not {type(value).__name__}", field="sha256")
    if value == "":
        return ""
    if _SHA256_HEX.fullmatch(value) is None:
        raise InvalidArgument("sha256 must be 64 hexadecimal characters", field="sha256")
    return value.lower()


def merge_expected_sha256(remembered: str, given: str) -> str:
    """The expected hash a session keeps after a client sent `given` ("" = none given).

    Two different non-empty hashes are InvalidArgument: the session keeps `remembered`.
    """
    remembered = normalize_sha256(remembered)
    given = normalize_sha256(given)
    if not given:
        return remembered
    if remembered and remembered != given:
        raise InvalidArgument("sha256 differs from the one this upload session was given",
                              field="sha256", expected_sha256=remembered)
    return given


# --- expiry (unix milliseconds, passed in) -------------------------------------------------


def expires_at_ms(state: State, last_activity_ms: int, ttl_ms: int) -> int:
    """`expires_at_unix_ms` of a session.

    ACTIVE: pass the time of its last activity (creation or the last chunk); it is aborted if
    idle past the result. Ended (COMMITTED/ABORTED): pass the time it ended; it is forgotten
    after the result.
    """
    as_state(state)
    if ttl_ms < 0:
        raise ValueError(f"ttl_ms {ttl_ms} is negative")
    return last_activity_ms + ttl_ms


def is_expired(expires_at_ms: int, now_ms: int) -> bool:
    """True once `now_ms` is past `expires_at_ms` (the instant itself still counts as alive)."""
    return now_ms > expires_at_ms


def check_preconditions(current_generation: str | None, if_absent: bool,
                        if_generation_match: str) -> None:
    """A commit's (or a create's) preconditions against the object's current generation (None:
    no such object). API.md: both may be set, and both must hold."""
    if if_absent and current_generation is not None:
        raise ObjectExists("the object already exists", generation=current_generation)
    if if_generation_match and current_generation != if_generation_match:
        raise GenerationMismatch("the object's current generation does not match",
                                 current_generation=current_generation or "")
