"""API.md upload sessions against a real node: Create/Get/Abort/ListUploadSessions, session
expiry (TTL) and the stream idle timeout.

TTL and idle-timeout tests start nodes with `session_ttl`/`stream_idle_timeout` of 1-2 s and poll
with a bounded loop rather than sleeping a fixed time.
"""

from __future__ import annotations

import concurrent.futures
import time

import grpc
import pytest

from node.pb import oss_pb2 as pb
from tests.contract import (ABORTED, ACTIVE, COMMITTED, caught_of, create, expect_error,
                            forged_tokens, get_session, hold, KiB, list_all_sessions, msg,
                            node_info, now_ms, open_upload, part_file, payload, put, sha256_hex,
                            Soft, split, stat, upload_chunks, upload_data, wait_until)

SHARED_NODE = True  # tests that take `node`/`stub` share one node per catalog (conftest)

CHUNK = 4 * KiB


def abort(stub, upload_id):
    return stub.AbortUploadSession(pb.AbortUploadSessionRequest(upload_id=upload_id), timeout=10)


# --- Create / Get -------------------------------------------------------------------------

def test_create_upload_session_fields(node, stub):
    ttl = node_info(stub).session_ttl_ms
    before = now_ms()
    s = create(stub, "obj", 12345, file_name="f.txt", chunk_size=8 * KiB)
    after = now_ms()
    assert s.upload_id and s.object_id == "obj" and s.file_name == "f.txt"
    assert s.file_size == 12345 and s.chunk_size == 8 * KiB
    assert s.uploaded_offset == 0 and s.sha256 == "" and s.state == ACTIVE
    assert before + ttl - 2000 <= s.expires_at_unix_ms <= after + ttl + 2000
    assert get_session(stub, s.upload_id) == s


def test_get_unknown_session_is_session_not_found(node, stub):
    for uid in ("nope", "0" * 32, "x" * 200):
        with expect_error("NOT_FOUND", "SESSION_NOT_FOUND"):
            get_session(stub, uid)


def test_active_expiry_moves_with_activity(node_factory):
    node = node_factory(workers=1, session_ttl=2)
    stub = node.stub()
    data = payload(4 * CHUNK)
    s = create(stub, "obj", data)
    assert node_info(stub).session_ttl_ms == 2000
    # Keep the session busy for longer than its TTL: it must stay ACTIVE.
    start = time.monotonic()
    off = 0
    while off < 3 * CHUNK:
        time.sleep(1.0)
        before = now_ms()
        resp = upload_data(stub, s.upload_id, data, CHUNK, start=off, end=off + CHUNK)
        off += CHUNK
        assert resp.session.state == ACTIVE
        # When it expires if nothing more arrives: about one TTL from now.
        assert before + 2000 - 1000 <= resp.session.expires_at_unix_ms <= now_ms() + 2000 + 1000
    assert time.monotonic() - start > 2.5
    resp = upload_data(stub, s.upload_id, data, CHUNK, start=off)
    assert resp.session.state == COMMITTED


def test_ended_sessions_are_shown_until_at_least_a_ttl_after_they_end(node, stub):
    ttl = node_info(stub).session_ttl_ms
    committed = put(stub, "obj", payload(100)).session
    ended = now_ms()
    got = get_session(stub, committed.upload_id)
    assert got.state == COMMITTED and got.uploaded_offset == 100
    assert got.expires_at_unix_ms >= ended + ttl - 2000
    s = create(stub, "other", 100)
    abort(stub, s.upload_id)
    ended = now_ms()
    got = get_session(stub, s.upload_id)
    assert got.state == ABORTED and got.object_id == "other"
    assert got.expires_at_unix_ms >= ended + ttl - 2000


def test_ended_sessions_are_shown_until_expires_at_then_forgotten(node_factory):
    node = node_factory(workers=1, session_ttl=2)
    stub = node.stub()
    committed = put(stub, "obj", payload(100)).session
    aborted = create(stub, "other", 100)
    abort(stub, aborted.upload_id)
    shown = {u: get_session(stub, u) for u in (committed.upload_id, aborted.upload_id)}
    assert shown[committed.upload_id].state == COMMITTED
    assert shown[aborted.upload_id].state == ABORTED
    last = max(s.expires_at_unix_ms for s in shown.values())
    # Shown (unchanged state) right up to expires_at ...
    while now_ms() < min(s.expires_at_unix_ms for s in shown.values()) - 300:
        for uid, before in shown.items():
            assert get_session(stub, uid).state == before.state
        time.sleep(0.2)
    # ... and forgotten after it ("ended: forgotten after this").
    for uid in shown:
        wait_until(lambda: now_ms() > last, 10, what="expiry")

        def forgotten(uid=uid):
            try:
                get_session(stub, uid)
            except grpc.RpcError as exc:
                return caught_of(exc).reason == "SESSION_NOT_FOUND"
            return False
        wait_until(forgotten, 10, interval=0.1, what=f"session {uid} forgotten")
    # A retry on the forgotten committed session is SESSION_NOT_FOUND; the object stays.
    with expect_error("NOT_FOUND", "SESSION_NOT_FOUND"):
        upload_chunks(stub, committed.upload_id, [(0, b"")])
    assert stat(stub, "obj").generation == committed.upload_id


# --- Abort --------------------------------------------------------------------------------

@pytest.mark.own_node
def test_abort_active_session_frees_its_bytes(node, stub):
    data = payload(3 * CHUNK)
    s = create(stub, "obj", data)
    upload_data(stub, s.upload_id, data, CHUNK, end=2 * CHUNK)
    part = part_file(node.data_dir, s.upload_id)
    assert part is not None and part.stat().st_size >= 2 * CHUNK
    assert abort(stub, s.upload_id) == pb.AbortUploadSessionResponse()
    assert get_session(stub, s.upload_id).state == ABORTED
    wait_until(lambda: part_file(node.data_dir, s.upload_id) is None, 5, what="part file freed")
    assert list_all_sessions(stub) == []
    with expect_error("NOT_FOUND", "SESSION_NOT_FOUND"):
        upload_data(stub, s.upload_id, data, CHUNK, start=2 * CHUNK)
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "obj")
    # Aborting an aborted session answers OK again.
    assert abort(stub, s.upload_id) == pb.AbortUploadSessionResponse()
    assert get_session(stub, s.upload_id).state == ABORTED


def test_abort_committed_session_is_session_committed(node, stub):
    resp = put(stub, "obj", payload(100))
    with expect_error("FAILED_PRECONDITION", "SESSION_COMMITTED"):
        abort(stub, resp.session.upload_id)
    assert get_session(stub, resp.session.upload_id).state == COMMITTED
    assert stat(stub, "obj") == resp.object


def test_abort_unknown_session_is_session_not_found(node, stub):
    with expect_error("NOT_FOUND", "SESSION_NOT_FOUND"):
        abort(stub, "no-such-upload")


def test_abort_while_a_stream_writes_is_session_busy(node, stub):
    data = payload(4 * CHUNK)
    s = create(stub, "obj", data)
    with hold(stub, msg(0, data[:CHUNK], s.upload_id)) as (feed, call, _):
        with expect_error("ABORTED", "SESSION_BUSY"):
            abort(stub, s.upload_id)
        assert get_session(stub, s.upload_id).state == ACTIVE
        for off, piece in split(data, CHUNK, CHUNK):
            feed.send(msg(off, piece))
        feed.close()
        resp = call.result(timeout=10)
    assert resp.session.state == COMMITTED and resp.object.sha256 == sha256_hex(data)


# --- ListUploadSessions -------------------------------------------------------------------

@pytest.mark.own_node
def test_list_upload_sessions_active_only_sorted_with_prefix(node, stub):
    made = [create(stub, oid, 100) for oid in ["b", "a", "c", "a", "b", "a-1", "ab"]]
    committed = put(stub, "a", payload(10)).session
    aborted = create(stub, "a", 100)
    abort(stub, aborted.upload_id)
    listed = list(stub.ListUploadSessions(pb.ListUploadSessionsRequest(), timeout=10).sessions)
    want = sorted(made, key=lambda s: (s.object_id, s.upload_id))
    assert [(s.object_id, s.upload_id) for s in listed] == \
        [(s.object_id, s.upload_id) for s in want]
    assert all(s.state == ACTIVE for s in listed)
    ids = {s.upload_id for s in listed}
    assert committed.upload_id not in ids and aborted.upload_id not in ids
    listed = stub.ListUploadSessions(pb.ListUploadSessionsRequest(object_id_prefix="a")).sessions
    assert [s.object_id for s in listed] == ["a", "a", "a-1", "ab"]
    assert list(stub.ListUploadSessions(pb.ListUploadSessionsRequest(
        object_id_prefix="zz")).sessions) == []


@pytest.mark.own_node
def test_list_upload_sessions_paging(node, stub):
    made = [create(stub, f"o{i % 7}", 100) for i in range(20)]
    want = [s.upload_id for s in sorted(made, key=lambda s: (s.object_id, s.upload_id))]
    for page_size in (1, 3, 7, 20, 21):
        got = [s.upload_id for s in list_all_sessions(stub, page_size=page_size)]
        assert got == want, page_size
    got = [s.upload_id for s in list_all_sessions(stub, prefix="o3", page_size=1)]
    assert got == [s.upload_id for s in sorted(made, key=lambda s: (s.object_id, s.upload_id))
                   if s.object_id == "o3"]


@pytest.mark.own_node
def test_list_upload_sessions_page_sizes_0_and_over_1000(node, stub):
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: create(stub, f"o{i:04d}", 10), range(1001)))
    resp = stub.ListUploadSessions(pb.ListUploadSessionsRequest(page_size=0), timeout=30)
    assert len(resp.sessions) == 100 and resp.next_page_token
    resp = stub.ListUploadSessions(pb.ListUploadSessionsRequest(page_size=100_000), timeout=30)
    assert len(resp.sessions) == 1000 and resp.next_page_token
    rest = stub.ListUploadSessions(pb.ListUploadSessionsRequest(
        page_size=1000, page_token=resp.next_page_token), timeout=30)
    assert [s.object_id for s in rest.sessions] == ["o1000"] and not rest.next_page_token


def test_list_upload_sessions_forged_page_token_is_invalid_page_token(node, stub):
    for i in range(6):
        create(stub, f"obj-{i:02d}", 10)
    real = stub.ListUploadSessions(pb.ListUploadSessionsRequest(page_size=2)).next_page_token
    assert real
    soft = Soft()
    for token in forged_tokens(real):
        with soft.check(repr(token)):
            with expect_error("INVALID_ARGUMENT", "INVALID_PAGE_TOKEN"):
                stub.ListUploadSessions(pb.ListUploadSessionsRequest(page_size=2,
                                                                     page_token=token))
    soft.done()


# --- session TTL --------------------------------------------------------------------------

def test_idle_active_session_expires_and_is_freed(node_factory):
    node = node_factory(workers=1, session_ttl=2)
    stub = node.stub()
    data = payload(3 * CHUNK)
    s = create(stub, "obj", data)
    resp = upload_data(stub, s.upload_id, data, CHUNK, end=CHUNK)
    assert resp.session.state == ACTIVE
    assert part_file(node.data_dir, s.upload_id) is not None
    expires = resp.session.expires_at_unix_ms
    assert expires <= now_ms() + 2000 + 1000
    other = create(stub, "other", 10)   # never touched again: expires and is freed as well
    other_part = part_file(node.data_dir, other.upload_id)
    wait_until(lambda: now_ms() > expires + 50, 10, what="expiry time")
    got = wait_until(lambda: (lambda g: g if g.state != ACTIVE else None)(
        get_session(stub, s.upload_id)), 10, interval=0.1, what="session to expire")
    assert got.state == ABORTED
    with expect_error("NOT_FOUND", "SESSION_NOT_FOUND"):
        upload_data(stub, s.upload_id, data, CHUNK, start=CHUNK)
    wait_until(lambda: part_file(node.data_dir, s.upload_id) is None, 10,
               what="expired session's part file freed")
    assert s.upload_id not in {x.upload_id for x in list_all_sessions(stub)}
    if other_part is not None:
        wait_until(lambda: not other_part.exists(), 10,
                   what="untouched expired session's part file freed")
    wait_until(lambda: other.upload_id not in {x.upload_id for x in list_all_sessions(stub)}, 10,
               what="other session expired")
    assert get_session(stub, other.upload_id).state == ABORTED
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "obj")


# --- stream idle timeout ------------------------------------------------------------------

def test_idle_stream_is_idle_timeout_and_the_session_resumes(node_factory):
    node = node_factory(workers=1, stream_idle_timeout=1)
    stub = node.stub()
    assert node_info(stub).stream_idle_timeout_ms == 1000
    data = payload(4 * CHUNK)
    s = create(stub, "obj", data)
    t0 = time.monotonic()
    with open_upload(stub) as (feed, call):
        feed.send(msg(0, data[:CHUNK], s.upload_id))
        feed.send(msg(CHUNK, data[CHUNK:2 * CHUNK]))
        exc = call.exception(timeout=15)
    elapsed = time.monotonic() - t0
    assert exc is not None, "the idle stream was not ended"
    caught = caught_of(exc)
    assert (caught.code, caught.reason) == ("ABORTED", "IDLE_TIMEOUT"), caught
    assert 0.8 <= elapsed <= 10, elapsed
    assert caught.uploaded_offset == 2 * CHUNK
    session = get_session(stub, s.upload_id)
    assert session.state == ACTIVE and session.uploaded_offset == 2 * CHUNK
    # The session is free again at once: no SESSION_BUSY.
    resp = upload_data(stub, s.upload_id, data, CHUNK, start=2 * CHUNK)
    assert resp.session.state == COMMITTED and resp.object.sha256 == sha256_hex(data)


def test_stream_sending_nothing_at_all_is_idle_timeout(node_factory):
    node = node_factory(workers=1, stream_idle_timeout=1)
    stub = node.stub()
    with open_upload(stub) as (feed, call):
        exc = call.exception(timeout=15)
    assert exc is not None
    caught = caught_of(exc)
    assert (caught.code, caught.reason) == ("ABORTED", "IDLE_TIMEOUT"), caught


def test_a_slow_but_steady_stream_is_not_idle(node_factory):
    node = node_factory(workers=1, stream_idle_timeout=1)
    stub = node.stub()
    data = payload(5 * CHUNK)
    s = create(stub, "obj", data)
    with open_upload(stub) as (feed, call):
        for i, (off, piece) in enumerate(split(data, CHUNK)):
            feed.send(msg(off, piece, s.upload_id if i == 0 else ""))
            time.sleep(0.5)   # 2.5 s in all, never 1 s silent
        feed.close()
        resp = call.result(timeout=10)
    assert resp.session.state == COMMITTED and resp.object.sha256 == sha256_hex(data)
