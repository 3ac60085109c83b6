"""Session rules: the transition table, chunk planning, hashes, chunk sizes and expiry.

The key property is `test_model_upload_rebuilds_the_bytes`: any interleaving of chunk sends
(resends, duplicates, straddling chunks, gaps, bytes past the end, too-large chunks) and
simulated crashes back to a checkpoint, applied through `plan_chunk` to a bytearray, rebuilds
exactly the original bytes, and every refused chunk is refused with its documented error.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from node.errors import (
    ChunkTooLarge,
    InvalidArgument,
    OffsetMismatch,
    OssError,
    PastEnd,
    SessionCommitted,
    SessionNotFound,
)
from node import session_rules as rules
from node.session_rules import (
    EVENTS,
    ChunkPlan,
    State,
    advise_chunk_size,
    expires_at_ms,
    is_complete,
    is_expired,
    merge_expected_sha256,
    normalize_sha256,
    plan_chunk,
    transition,
    upload_disposition,
)

A, C, X = State.ACTIVE, State.COMMITTED, State.ABORTED
HASH = "ab" * 32
OTHER = "cd" * 32

# --- states --------------------------------------------------------------------------------


def test_state_numbers_match_the_proto():
    from node.pb import oss_pb2

    for state in State:
        assert state == oss_pb2.UploadSession.State.Value(state.name)


EXPECTED_TRANSITIONS = {
    (A, "commit"): C, (A, "abort"): X, (A, "expire"): X, (A, "fail_commit"): X,
    (C, "commit"): SessionCommitted, (C, "abort"): SessionCommitted,
    (C, "expire"): SessionCommitted, (C, "fail_commit"): SessionCommitted,
    (X, "abort"): X,
    (X, "commit"): SessionNotFound, (X, "expire"): SessionNotFound,
    (X, "fail_commit"): SessionNotFound,
}


def test_every_state_event_pair_is_covered():
    assert set(EXPECTED_TRANSITIONS) == set(itertools.product(State, EVENTS))


@pytest.mark.parametrize("state, event", sorted(EXPECTED_TRANSITIONS))
def test_transition(state, event):
    expected = EXPECTED_TRANSITIONS[(state, event)]
    if isinstance(expected, State):
        assert transition(state, event) is expected
        assert transition(int(state), event) is expected  # a number from the catalog works too
    else:
        with pytest.raises(expected) as info:
            transition(state, event)
        assert info.value.metadata["state"] == state.name


def test_abort_is_idempotent():
    state = transition(A, "abort")
    assert transition(state, "abort") is X
    assert transition(transition(state, "abort"), "abort") is X


def test_abort_of_a_committed_session_is_session_committed():
    with pytest.raises(SessionCommitted) as info:
        transition(C, "abort")
    assert (info.value.code, info.value.reason) == ("FAILED_PRECONDITION", "SESSION_COMMITTED")


@pytest.mark.parametrize("state, event", [(A, "bogus"), (A, ""), (0, "abort"), (4, "commit")])
def test_unknown_states_and_events_are_bugs(state, event):
    with pytest.raises(ValueError):
        transition(state, event)


@given(st.lists(st.sampled_from(sorted(EVENTS)), max_size=8))
@settings(max_examples=200, deadline=None)
def test_event_sequences(events):
    """From ACTIVE: one event ends the session; COMMITTED and ABORTED never change again."""
    state = A
    for ev in events:
        try:
            new = transition(state, ev)
        except (SessionCommitted, SessionNotFound) as err:
            assert state is not A
            assert isinstance(err, SessionCommitted) == (state is C)
            continue
        if state is not A:
            assert (state, ev, new) == (X, "abort", X)
        state = new
    assert state is (A if not events else (C if events[0] == "commit" else X))


def test_upload_disposition():
    assert upload_disposition(A) == "write"
    assert upload_disposition(C) == "replay"
    assert upload_disposition(2) == "replay"
    with pytest.raises(SessionNotFound):
        upload_disposition(X)
    with pytest.raises(ValueError):
        upload_disposition(0)


# --- chunk plans ---------------------------------------------------------------------------


def plan(uploaded, offset, length, file_size=100, max_chunk=32):
    return plan_chunk(uploaded_offset=uploaded, file_size=file_size, offset=offset,
                      length=length, max_chunk_size=max_chunk)


def test_chunk_plan_is_frozen_with_slots():
    p = ChunkPlan(skip=0, length=1, write_at=0, new_offset=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.length = 2
    assert not hasattr(p, "__dict__")
    assert not p.duplicate and ChunkPlan(3, 0, 5, 5).duplicate


def test_plan_in_order_chunk():
    assert plan(10, 10, 5) == ChunkPlan(skip=0, length=5, write_at=10, new_offset=15)


def test_plan_first_chunk_and_last_chunk():
    assert plan(0, 0, 32) == ChunkPlan(0, 32, 0, 32)
    assert plan(96, 96, 4) == ChunkPlan(0, 4, 96, 100)


def test_plan_duplicate_wholly_below():
    p = plan(50, 10, 20)
    assert p == ChunkPlan(skip=20, length=0, write_at=50, new_offset=50) and p.duplicate
    assert plan(50, 30, 20).duplicate  # ends exactly at uploaded_offset


def test_plan_empty_chunks_are_no_ops():
    assert plan(50, 50, 0) == ChunkPlan(0, 0, 50, 50)
    assert plan(50, 0, 0).duplicate
    assert plan(100, 100, 0).duplicate  # at the end of a complete upload
    zero = plan_chunk(uploaded_offset=0, file_size=0, offset=0, length=0, max_chunk_size=4096)
    assert zero.duplicate and zero.new_offset == 0


def test_plan_straddling_chunk_is_trimmed():
    assert plan(50, 40, 20) == ChunkPlan(skip=10, length=10, write_at=50, new_offset=60)
    assert plan(99, 80, 20) == ChunkPlan(skip=19, length=1, write_at=99, new_offset=100)


def test_plan_gap_is_offset_mismatch():
    with pytest.raises(OffsetMismatch) as info:
        plan(50, 51, 1)
    assert info.value.metadata["expected_offset"] == "50"
    assert info.value.reason == "OFFSET_MISMATCH"
    with pytest.raises(OffsetMismatch):
        plan(50, 60, 0)  # an empty chunk above the offset is a gap too


def test_plan_past_end():
    with pytest.raises(PastEnd) as info:
        plan(90, 90, 11)
    assert info.value.metadata["file_size"] == "100"
    with pytest.raises(PastEnd):
        plan(100, 101, 0)  # starts past the end
    with pytest.raises(PastEnd):
        plan(50, 95, 10)  # past the end and a gap: PastEnd is checked first


def test_plan_chunk_too_large_is_checked_first():
    with pytest.raises(ChunkTooLarge) as info:
        plan(0, 0, 33)
    assert info.value.metadata["max_chunk_size"] == "32"
    with pytest.raises(ChunkTooLarge):
        plan(0, -5, 33)  # too large and negative
    with pytest.raises(ChunkTooLarge):
        plan(0, 90, 33)  # too large and past the end
    plan(0, 0, 32)  # exactly the maximum is fine


def test_plan_negative_offset_is_invalid_argument():
    with pytest.raises(InvalidArgument) as info:
        plan(0, -1, 1)
    assert info.value.reason == "INVALID_ARGUMENT"
    with pytest.raises(InvalidArgument):
        plan(0, -1, 200, file_size=100, max_chunk=1000)  # before PastEnd
    with pytest.raises(InvalidArgument):
        plan(0, 0, -1)


def test_plan_refuses_an_impossible_session():
    with pytest.raises(ValueError):
        plan(101, 0, 1)
    with pytest.raises(ValueError):
        plan(-1, 0, 1)


def test_is_complete():
    assert is_complete(0, 0)
    assert is_complete(100, 100)
    assert not is_complete(99, 100)


@given(uploaded=st.integers(0, 200), extra=st.integers(0, 200), offset=st.integers(-300, 500),
       length=st.integers(-5, 300), max_chunk=st.integers(0, 300))
@settings(max_examples=500, deadline=None)
def test_plan_chunk_plans_or_raises_its_typed_error(uploaded, extra, offset, length, max_chunk):
    file_size = uploaded + extra
    try:
        p = plan_chunk(uploaded_offset=uploaded, file_size=file_size, offset=offset,
                       length=length, max_chunk_size=max_chunk)
    except (ChunkTooLarge, InvalidArgument, PastEnd, OffsetMismatch) as err:
        assert type(err) is _expected_error(uploaded, file_size, offset, length, max_chunk)
        return
    assert _expected_error(uploaded, file_size, offset, length, max_chunk) is None
    assert p.skip >= 0 and p.length >= 0 and p.skip + p.length == length
    assert p.write_at == uploaded
    if not p.duplicate:
        assert offset + p.skip == uploaded  # the written bytes start exactly at the old offset
    assert p.new_offset == max(uploaded, offset + length) <= file_size
    assert p.new_offset - p.write_at == p.length


def _expected_error(uploaded, file_size, offset, length, max_chunk):
    """The spec's order of checks, written out independently."""
    if length > max_chunk:
        return ChunkTooLarge
    if offset < 0 or length < 0:
        return InvalidArgument
    if offset + length > file_size:
        return PastEnd
    if offset > uploaded:
        return OffsetMismatch
    return None


# --- the model upload ----------------------------------------------------------------------

JUNK = 0xEE  # what a client would send for bytes that do not exist


def _chunk(content: bytes, offset: int, length: int) -> bytes:
    if offset < 0:
        return bytes([JUNK]) * length
    data = content[offset:offset + length]
    return data + bytes([JUNK]) * (length - len(data))


class ModelUpload:
    """A session as the node keeps it: a part file (bytearray) and its offsets."""

    DOCUMENTED = (OffsetMismatch, PastEnd, ChunkTooLarge, InvalidArgument)

    def __init__(self, content: bytes, max_chunk: int):
        self.content = content
        self.file_size = len(content)
        self.max_chunk = max_chunk
        self.part = bytearray()
        self.uploaded = 0
        self.checkpoint = 0  # the durable offset: what survives a crash
        self.completed = False

    def send(self, offset: int, length: int) -> bool:
        data = _chunk(self.content, offset, length)
        before = (self.uploaded, bytes(self.part), self.checkpoint)
        expected = _expected_error(self.uploaded, self.file_size, offset, length, self.max_chunk)
        try:
            p = plan_chunk(uploaded_offset=self.uploaded, file_size=self.file_size,
                           offset=offset, length=len(data), max_chunk_size=self.max_chunk)
        except OssError as err:
            assert isinstance(err, self.DOCUMENTED), err
            assert type(err) is expected
            assert (self.uploaded, bytes(self.part), self.checkpoint) == before
            event(f"refused: {err.reason}")
            return False
        assert expected is None
        assert p.write_at == self.uploaded == len(self.part)
        assert p.skip + p.length == len(data)
        self.part[p.write_at:p.write_at + p.length] = data[p.skip:p.skip + p.length]
        assert p.new_offset >= self.uploaded  # never decreases while the node runs
        self.uploaded = p.new_offset
        assert len(self.part) == self.uploaded
        assert self.part == self.content[:self.uploaded]
        event("duplicate" if p.duplicate else ("trimmed" if p.skip else "written"))
        if is_complete(self.uploaded, self.file_size):
            assert bytes(self.part) == self.content
            self.completed = True
        return True

    def save_checkpoint(self) -> None:
        self.checkpoint = self.uploaded

    def crash(self) -> None:
        """The node dies: the part file is cut back to the last durable offset."""
        assert self.checkpoint <= self.uploaded
        self.uploaded = self.checkpoint
        del self.part[self.checkpoint:]
        event("crash")


@given(st.data())
@settings(max_examples=150, deadline=None)
def test_model_upload_rebuilds_the_bytes(data):
    size = data.draw(st.integers(0, 400), label="size")
    content = data.draw(st.binary(min_size=size, max_size=size), label="content")
    max_chunk = data.draw(st.integers(1, 64), label="max_chunk")
    model = ModelUpload(content, max_chunk)
    steps = data.draw(st.integers(0, 80), label="steps")
    for _ in range(steps):
        kind = data.draw(st.sampled_from(["next", "next", "next", "resend", "straddle", "gap",
                                          "anywhere", "big", "checkpoint", "crash"]))
        up = model.uploaded
        if kind == "next":  # what a well-behaved client sends
            model.send(up, data.draw(st.integers(0, min(max_chunk, size - up))))
        elif kind == "resend":  # an old chunk again (lost response, retried stream)
            offset = data.draw(st.integers(0, up))
            model.send(offset, data.draw(st.integers(0, min(max_chunk, up - offset))))
        elif kind == "straddle" and 0 < up < size and max_chunk > 1:  # starts below the offset, ends above it
            offset = data.draw(st.integers(max(0, up - max_chunk + 1), up - 1))
            top = min(max_chunk, size - offset)
            model.send(offset, data.draw(st.integers(min(up - offset + 1, top), top)))
        elif kind == "gap" and up < size:
            offset = data.draw(st.integers(up + 1, size))
            model.send(offset, data.draw(st.integers(0, min(max_chunk, size - offset))))
        elif kind in ("anywhere", "straddle", "gap"):  # gaps, past the end, negative offsets
            model.send(data.draw(st.integers(-3, size + 5)), data.draw(st.integers(0, max_chunk + 5)))
        elif kind == "big":
            model.send(data.draw(st.integers(0, size)),
                       data.draw(st.integers(max_chunk + 1, 2 * max_chunk + 2)))
        elif kind == "checkpoint":
            model.save_checkpoint()
        else:
            model.crash()
            assert model.uploaded <= up
    event("completed during the steps" if model.completed else "completed by the resume")
    # The client resumes from uploaded_offset (as GetUploadSession reports it) until done.
    while not is_complete(model.uploaded, size):
        assert model.send(model.uploaded, min(max_chunk, size - model.uploaded))
    if size == 0:
        assert model.send(0, 0)
    assert model.completed and bytes(model.part) == content


# --- hashes --------------------------------------------------------------------------------


def test_normalize_sha256():
    assert normalize_sha256("") == ""
    assert normalize_sha256(HASH) == HASH
    assert normalize_sha256(HASH.upper()) == HASH
    assert normalize_sha256("aB" * 32) == HASH
    for bad in ["ab" * 31, "ab" * 33, "g" * 64, " " + "a" * 63, "a" * 64 + "\n", "\uff41" * 64,
                "0x" + "a" * 62, None, b"a" * 64]:
        with pytest.raises(InvalidArgument):
            normalize_sha256(bad)


@given(st.one_of(st.text(max_size=70), st.from_regex(r"[0-9a-fA-F]{62,66}", fullmatch=True),
                 st.from_regex(r"[0-9a-fA-F]{64}\n?", fullmatch=True), st.none(), st.binary(max_size=70)))
@settings(max_examples=400, deadline=None)
def test_normalize_sha256_parses_or_raises(value):
    try:
        out = normalize_sha256(value)
    except InvalidArgument:
        assert not (isinstance(value, str) and (value == "" or (
            len(value) == 64 and set(value) <= set("0123456789abcdefABCDEF"))))
    else:
        assert out == value.lower()
        assert out == "" or (len(out) == 64 and set(out) <= set("0123456789abcdef"))


def test_merge_expected_sha256():
    assert merge_expected_sha256("", "") == ""
    assert merge_expected_sha256("", HASH.upper()) == HASH
    assert merge_expected_sha256(HASH, "") == HASH
    assert merge_expected_sha256(HASH, HASH.upper()) == HASH
    with pytest.raises(InvalidArgument) as info:
        merge_expected_sha256(HASH, OTHER)
    assert info.value.metadata["expected_sha256"] == HASH
    with pytest.raises(InvalidArgument):
        merge_expected_sha256(HASH, "nothex")


@given(st.lists(st.sampled_from(["", HASH, HASH.upper(), OTHER, "zz"]), max_size=6))
@settings(max_examples=200, deadline=None)
def test_merge_sequences_remember_the_first_hash(given_hashes):
    remembered = ""
    for value in given_hashes:
        try:
            new = merge_expected_sha256(remembered, value)
        except InvalidArgument:
            assert value == "zz" or (remembered and value.lower() != remembered)
            continue
        assert new == (remembered or value.lower())
        remembered = new
    valid = [v.lower() for v in given_hashes if v not in ("", "zz")]
    assert remembered == (valid[0] if valid else "")


# --- chunk size advice ---------------------------------------------------------------------


@pytest.mark.parametrize("requested, expected", [
    (0, 1 << 20), (1, 4096), (4095, 4096), (4096, 4096), (65536, 65536),
    (4 << 20, 4 << 20), ((4 << 20) + 1, 4 << 20), (2**31 - 1, 4 << 20),
])
def test_advise_chunk_size(requested, expected):
    assert advise_chunk_size(requested, 1 << 20, 4 << 20) == expected


def test_advise_chunk_size_negative():
    with pytest.raises(InvalidArgument):
        advise_chunk_size(-1, 1 << 20, 4 << 20)


@given(st.integers(-(2**31), 2**31 - 1))
@settings(max_examples=200, deadline=None)
def test_advise_chunk_size_parses_or_raises(requested):
    try:
        out = advise_chunk_size(requested, 1 << 20, 4 << 20)
    except InvalidArgument:
        assert requested < 0
    else:
        assert 4096 <= out <= 4 << 20


# --- expiry --------------------------------------------------------------------------------


def test_expiry():
    ttl = 86_400_000
    assert expires_at_ms(A, 1_000, ttl) == 1_000 + ttl
    assert expires_at_ms(C, 5_000, ttl) == 5_000 + ttl  # ended at 5 s
    assert expires_at_ms(X, 7_000, ttl) == 7_000 + ttl
    assert not is_expired(1_000 + ttl, 1_000)
    assert not is_expired(1_000 + ttl, 1_000 + ttl)  # alive until the instant itself
    assert is_expired(1_000 + ttl, 1_001 + ttl)
    with pytest.raises(ValueError):
        expires_at_ms(0, 0, ttl)
    with pytest.raises(ValueError):
        expires_at_ms(A, 0, -1)


# --- slices ---------------------------------------------------------------------------------

@given(size=st.integers(0, 1 << 40), requested=st.integers(0, 200),
       chunk=st.integers(1, 1 << 24))
def test_slices_cover_the_object_once_in_whole_chunks(size, requested, chunk):
    plan = rules.plan_slices(size, requested, chunk)
    if not plan:
        assert requested <= 1 or -(-size // chunk) <= 1
        return
    assert 2 <= len(plan) <= min(requested, rules.MAX_SLICES)
    assert plan[0][0] == 0 and plan[-1][0] + plan[-1][1] == size
    for (start, length), (after, _) in zip(plan, plan[1:]):
        assert start + length == after and length % chunk == 0
    assert all(length > 0 for _, length in plan)


def test_a_negative_slice_count_is_invalid():
    with pytest.raises(InvalidArgument):
        rules.plan_slices(10, -1, 4)
