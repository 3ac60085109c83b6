"""Sliced sessions (API.md, "Sliced sessions"): one object uploaded over several streams.

A real node (two workers, on each catalog backend) through the raw stubs: slices are sessions of
their own, uploaded concurrently; an empty chunk at offset file_size on the parent commits the
object atomically, its SHA-256 computed over the whole object. Every way a sliced session can go
wrong leaves no object half-made and no part file behind.
"""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import time

import grpc
import pytest

from node.catalog.sqlite import SCHEMA, Catalog
from node.pb import oss_pb2 as pb
from node.transfers.progress import human_size
from node.session_rules import MAX_SLICES
from tests.conftest import RunningNode
from tests.contract import (ABORTED, ACTIVE, COMMITTED, KiB, MiB, create, download_all,
                            expect_error, get_session, held_stream, list_all_sessions, parts_dir,
                            payload, sha256_hex, stat, upload_data, wait_until)

CHUNK = 64 * KiB


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def sliced_node(request, tmp_path_factory):
    flags = {"workers": 2, "default_chunk_size": "64K"}
    if request.param == "postgresql":
        flags["catalog"] = request.getfixturevalue("postgres_server").new_database()
    node = RunningNode(tmp_path_factory.mktemp("sliced"), flags)
    node.start()
    yield node
    node.stop()


@pytest.fixture
def stub(sliced_node):
    with sliced_node.channel() as channel:
        from node.pb import oss_pb2_grpc
        yield oss_pb2_grpc.ObjectStorageStub(channel)


def commit(stub, session: pb.UploadSession, sha256: str = "") -> pb.UploadResponse:
    return stub.Upload(iter([pb.UploadChunk(upload_id=session.upload_id, offset=session.file_size,
                                            sha256=sha256)]), timeout=60)


def send_slice(stub, piece: pb.UploadSession, data: bytes) -> pb.UploadResponse:
    return upload_data(stub, piece.upload_id,
                       data[piece.slice_offset:piece.slice_offset + piece.file_size], CHUNK)


def send_all(stub, session: pb.UploadSession, data: bytes) -> list[pb.UploadResponse]:
    with concurrent.futures.ThreadPoolExecutor(len(session.slices)) as pool:
        return list(pool.map(lambda s: send_slice(stub, s, data), session.slices))


def parts_of(node, session: pb.UploadSession) -> list[str]:
    ids = {session.upload_id, *(s.upload_id for s in session.slices)}
    return [n for n in os.listdir(parts_dir(node.data_dir)) if n.rsplit(".", 1)[-1] in ids]


def test_slices_upload_concurrently_and_commit_one_verified_object(sliced_node, stub):
    data = payload(MiB + 12_345, seed=1)
    session = create(stub, "sliced-one", data, chunk_size=CHUNK, slices=3,
                     sha256=sha256_hex(data), content_type="application/x-test",
                     metadata={"k": "v"})
    assert session.state == ACTIVE and len(session.slices) == 3
    assert [s.slice_offset for s in session.slices] == [0, 6 * CHUNK, 12 * CHUNK]
    assert sum(s.file_size for s in session.slices) == len(data)
    assert all(s.parent_upload_id == session.upload_id and s.state == ACTIVE
               and s.object_id == "sliced-one" for s in session.slices)
    for response in send_all(stub, session, data):
        # A complete slice is durable and stays ACTIVE: only its sliced session commits.
        assert response.session.state == ACTIVE and not response.HasField("object")
        assert response.session.uploaded_offset == response.session.file_size
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "sliced-one")
    done = commit(stub, session)
    assert done.session.state == COMMITTED and done.object.generation == session.upload_id
    assert done.object.sha256 == sha256_hex(data) and done.object.size == len(data)
    assert done.object.content_type == "application/x-test" and dict(done.object.metadata) == {"k": "v"}
    assert download_all(stub, "sliced-one").data == data
    after = get_session(stub, session.upload_id)
    assert after.state == COMMITTED and after.uploaded_offset == len(data)
    assert [s.state for s in after.slices] == [COMMITTED] * 3
    assert parts_of(sliced_node, session) == []
    # A commit sent again (its answer lost) answers the same object.
    assert commit(stub, session).object == done.object
    assert send_slice(stub, session.slices[1], data).object == done.object


def test_the_objects_sha256_may_come_with_the_commit_and_is_checked_there(sliced_node, stub):
    data = payload(300 * KiB, seed=2)
    session = create(stub, "sliced-late-hash", data, chunk_size=CHUNK, slices=2)
    send_all(stub, session, data)
    with expect_error("DATA_LOSS", "SHA256_MISMATCH"):
        commit(stub, session, sha256="0" * 64)
    assert get_session(stub, session.upload_id).state == ABORTED
    assert {s.state for s in get_session(stub, session.upload_id).slices} == {ABORTED}
    assert parts_of(sliced_node, session) == []
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "sliced-late-hash")
    again = create(stub, "sliced-late-hash", data, chunk_size=CHUNK, slices=2)
    send_all(stub, again, data)
    assert commit(stub, again, sha256=sha256_hex(data)).object.sha256 == sha256_hex(data)


def test_a_commit_before_every_slice_is_complete_is_refused_and_changes_nothing(sliced_node, stub):
    data = payload(512 * KiB, seed=3)
    session = create(stub, "sliced-early", data, chunk_size=CHUNK, slices=2)
    first, second = session.slices
    send_slice(stub, first, data)
    part = data[second.slice_offset:second.slice_offset + CHUNK]
    upload_data(stub, second.upload_id, part, CHUNK)  # one chunk of the second slice
    with expect_error("FAILED_PRECONDITION", "SLICES_INCOMPLETE") as caught:
        commit(stub, session, sha256=sha256_hex(data))
    assert caught.metadata["slice_upload_id"] == second.upload_id
    assert caught.metadata["slice_uploaded_offset"] == str(CHUNK)
    now = get_session(stub, session.upload_id)
    assert now.state == ACTIVE and [s.uploaded_offset for s in now.slices] == [first.file_size, CHUNK]
    # The second slice resumes from its own checkpoint, as any session does.
    upload_data(stub, second.upload_id, data[second.slice_offset:], CHUNK, start=CHUNK)
    assert commit(stub, session, sha256=sha256_hex(data)).object.size == len(data)
    assert download_all(stub, "sliced-early").data == data


def test_bytes_go_to_slices_only(sliced_node, stub):
    data = payload(256 * KiB, seed=4)
    session = create(stub, "sliced-wrong-door", data, chunk_size=CHUNK, slices=2)
    with expect_error("INVALID_ARGUMENT", "INVALID_ARGUMENT"):
        upload_data(stub, session.upload_id, data, CHUNK)
    piece = session.slices[0]
    with expect_error("INVALID_ARGUMENT", "INVALID_ARGUMENT"):
        stub.Upload(iter([pb.UploadChunk(upload_id=piece.upload_id, offset=0, data=data[:CHUNK],
                                         sha256=sha256_hex(data))]), timeout=30)
    with expect_error("OUT_OF_RANGE", "PAST_END"):  # a chunk past the slice's end
        upload_data(stub, piece.upload_id, data[:piece.file_size + CHUNK], CHUNK)
    # The slice's own bytes before the refused chunk are kept; nothing reached the parent.
    now = get_session(stub, session.upload_id)
    assert now.uploaded_offset == 0 and [s.uploaded_offset for s in now.slices] == [piece.file_size, 0]


def test_a_slice_held_by_one_stream_is_busy_for_another_and_for_the_commit(sliced_node, stub):
    data = payload(256 * KiB, seed=5)
    session = create(stub, "sliced-busy", data, chunk_size=CHUNK, slices=2)
    first, second = session.slices
    send_slice(stub, second, data)
    call, feed = held_stream(stub, first.upload_id, data[:CHUNK])
    try:
        with expect_error("ABORTED", "SESSION_BUSY"):
            send_slice(stub, first, data)
        with expect_error("FAILED_PRECONDITION", "SLICES_INCOMPLETE"):
            commit(stub, session)
        for offset in range(CHUNK, first.file_size, CHUNK):
            feed.put(pb.UploadChunk(offset=offset, data=data[offset:offset + CHUNK]))
        # Complete but still held by its open stream: the commit must wait for it.
        wait_until(lambda: get_session(stub, first.upload_id).uploaded_offset == first.file_size,
                   what="the held slice to complete")
        with expect_error("ABORTED", "SESSION_BUSY"):
            commit(stub, session)
    finally:
        feed.put(None)
    assert call.result(timeout=30).session.uploaded_offset == first.file_size
    assert commit(stub, session).object.sha256 == sha256_hex(data)


@pytest.mark.parametrize("via", ["parent", "slice"])
def test_abort_from_any_member_ends_the_whole_sliced_session(sliced_node, stub, via):
    data = payload(256 * KiB, seed=6)
    session = create(stub, f"sliced-abort-{via}", data, chunk_size=CHUNK, slices=2)
    send_slice(stub, session.slices[0], data)
    target = session.upload_id if via == "parent" else session.slices[1].upload_id
    stub.AbortUploadSession(pb.AbortUploadSessionRequest(upload_id=target), timeout=30)
    after = get_session(stub, session.upload_id)
    assert after.state == ABORTED and {s.state for s in after.slices} == {ABORTED}
    assert parts_of(sliced_node, session) == []
    with expect_error("NOT_FOUND", "SESSION_NOT_FOUND"):
        commit(stub, session)


def test_a_failed_precondition_at_commit_ends_every_slice(sliced_node, stub):
    data = payload(256 * KiB, seed=7)
    session = create(stub, "sliced-absent", data, chunk_size=CHUNK, slices=2, if_absent=True)
    send_all(stub, session, data)
    upload_data(stub, create(stub, "sliced-absent", b"first").upload_id, b"first", CHUNK)
    with expect_error("ALREADY_EXISTS", "OBJECT_EXISTS"):
        commit(stub, session)
    after = get_session(stub, session.upload_id)
    assert after.state == ABORTED and {s.state for s in after.slices} == {ABORTED}
    assert parts_of(sliced_node, session) == []
    assert download_all(stub, "sliced-absent").data == b"first"


def test_small_objects_and_odd_requests_get_plain_sessions(sliced_node, stub):
    tiny = create(stub, "sliced-tiny", 10, chunk_size=CHUNK, slices=4)
    assert tiny.slices == [] and tiny.parent_upload_id == ""
    many = create(stub, "sliced-many", 1024 * CHUNK, chunk_size=CHUNK, slices=10_000)
    assert len(many.slices) == MAX_SLICES
    with expect_error("INVALID_ARGUMENT", "INVALID_ARGUMENT"):
        create(stub, "sliced-negative", 10 * CHUNK, chunk_size=CHUNK, slices=-1)
    for s in (tiny, many):
        stub.AbortUploadSession(pb.AbortUploadSessionRequest(upload_id=s.upload_id), timeout=30)


def test_a_worker_killed_while_composing_leaves_a_commit_that_runs_again(node_factory, tmp_path):
    once = tmp_path / "once"
    once.mkdir()
    node = node_factory(workers=1, default_chunk_size="64K",
                        env={"MINI_OSS_FAILPOINTS": "slices_copied=crash",
                             "MINI_OSS_FAILPOINTS_ONCE": str(once)})
    stub = node.stub()
    data = payload(MiB, seed=8)
    session = create(stub, "sliced-crash", data, chunk_size=CHUNK, slices=4, sha256=sha256_hex(data))
    send_all(stub, session, data)
    with pytest.raises(grpc.RpcError):
        commit(stub, session)
    assert os.listdir(once) == ["slices_copied"], "the failpoint did not fire"

    def committed():
        try:
            return commit(stub, session)
        except grpc.RpcError:  # the worker is restarting
            return None
    done = wait_until(committed, 30, what="the restarted worker to commit")
    assert done.object.sha256 == sha256_hex(data)
    assert download_all(stub, "sliced-crash").data == data
    assert parts_of(node, session) == []


def test_every_slice_takes_a_place_under_the_session_limits(node_factory):
    # Each slice holds a row and a part file: a client asking for many slices must not get
    # past the limits that bound those (an attacker's 64-slice sessions would take 65 places).
    node = node_factory(workers=1, max_sessions=5, default_chunk_size="64K")
    stub = node.stub()
    session = create(stub, "sliced-cap", 8 * CHUNK, chunk_size=CHUNK, slices=4)
    assert len(session.slices) == 4  # 5 places: all of them
    with expect_error("RESOURCE_EXHAUSTED", "TOO_MANY_SESSIONS"):
        create(stub, "sliced-cap2", 10)
    stub.AbortUploadSession(pb.AbortUploadSessionRequest(upload_id=session.upload_id), timeout=30)
    with expect_error("RESOURCE_EXHAUSTED", "TOO_MANY_SESSIONS"):  # 6 places > 5: refused whole
        create(stub, "sliced-cap3", 10 * CHUNK, chunk_size=CHUNK, slices=5)
    assert list_all_sessions(stub) == []  # nothing half-made
    assert len(create(stub, "sliced-cap4", 8 * CHUNK, chunk_size=CHUNK, slices=4).slices) == 4


def assert_an_old_plain_session(catalog) -> None:
    """A session written before schema 3 reads as a plain session with no slices."""
    rec = catalog.get_session("u1")
    assert (rec.slices, rec.parent_id, rec.slice_offset) == (0, "", 0)
    assert catalog.slices_of("u1") == []


def test_a_catalog_from_before_slices_gains_their_columns(tmp_path):
    db = sqlite3.connect(tmp_path / "catalog.db")
    db.executescript(SCHEMA)  # the sessions table as schema version 2 made it
    db.execute("INSERT INTO sessions VALUES ('u1', 'o', 'f', 3, 4096, 0, '', 1, '', '{}', 0, '',"
               " 'c', 1, 1, 1, NULL)")
    db.commit()
    db.close()
    Catalog.prepare(str(tmp_path))
    catalog = Catalog(str(tmp_path))
    try:
        assert_an_old_plain_session(catalog)
    finally:
        catalog.close()


# --- the client library and the command line ------------------------------------------------

def test_the_library_uploads_one_object_over_several_streams(sliced_node, tmp_path):
    from node.client import Client
    data = payload(3 * MiB + 777, seed=9)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    seen = []
    with Client(sliced_node.addr, channels=2) as client:
        info = client.upload(path, "sliced-lib", chunk_size=CHUNK, parallel=4,
                             progress=lambda done, total: seen.append((done, total)))
        assert info.sha256 == sha256_hex(data) and info.size == len(data)
        session = client.get_session(info.generation)
        assert len(session.slices) == 4 and session.state == COMMITTED
        import io
        sink = io.BytesIO()
        client.download("sliced-lib", sink)
    assert sink.getvalue() == data
    # One progress line for the whole object: the slices' bytes add up to it, never past it.
    assert seen[-1] == (len(data), len(data)) and max(done for done, _ in seen) == len(data)
    assert {total for _, total in seen} == {len(data)}


def test_a_parallel_put_killed_mid_way_resumes_every_slice_when_run_again(node_factory, tmp_path):
    from tests.test_resume_cli import (CHUNK as SLOW_CHUNK, SIZE, SLOW, active_sessions, cli,
                                       finish, make_file, received, run_cli)
    node = node_factory(**SLOW)
    src = tmp_path / "photo.bin"
    data = make_file(src)
    proc = cli("put", str(src), "--object-id", "photo-p", "--addr", node.addr, "--parallel", "3")
    wait_until(lambda: received(node) >= MiB, 20)
    proc.kill()
    finish(proc)

    def durable() -> int:
        (parent,) = [s for s in active_sessions(node) if not s.parent_upload_id]
        with node.channel() as channel:
            from node.pb import oss_pb2_grpc
            session = get_session(oss_pb2_grpc.ObjectStorageStub(channel), parent.upload_id)
        assert len(session.slices) == 3
        return sum(s.uploaded_offset for s in session.slices)
    wait_until(lambda: durable() > 0 and all(
        not s.parent_upload_id or s.uploaded_offset for s in active_sessions(node)), 20)
    held = durable()
    code, out, _ = run_cli("uploads", "--addr", node.addr)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4 and sum("slice of" in line for line in lines) == 3
    (parent_line,) = [line for line in lines if "slice of" not in line]
    assert f"photo-p  {human_size(held)} of 3.0 MiB" in parent_line
    before = received(node)
    code, out, err = run_cli("put", str(src), "--object-id", "photo-p", "--addr", node.addr,
                             "--parallel", "3")
    assert code == 0, err
    assert "resuming photo-p at" in err, err
    # Each slice resumes from its own checkpoint: at most one chunk per slice is sent again.
    assert received(node) - before <= SIZE - held + 3 * SLOW_CHUNK
    with node.channel() as channel:
        from node.pb import oss_pb2_grpc
        assert download_all(oss_pb2_grpc.ObjectStorageStub(channel), "photo-p").data == data
    assert active_sessions(node) == []
    print("kill -9 mid parallel put:", {"held": held, "saved": held})


def test_parallel_must_be_a_positive_number(tmp_path):
    from tests.test_resume_cli import run_cli
    src = tmp_path / "f"
    src.write_bytes(b"x")
    for bad in ("0", "-2", "many"):
        code, _, err = run_cli("put", str(src), "--parallel", bad, "--addr", "127.0.0.1:1")
        assert code == 2 and "--parallel" in err, (bad, code, err)


def test_a_sliced_session_expires_only_when_none_of_its_slices_moves(node_factory):
    # TTL 2 s, swept every 0.2 s: one slice keeps moving for three TTLs while the sliced
    # session and its other slice sit idle; nothing expires until all of them are idle.
    node = node_factory(workers=1, session_ttl=2, default_chunk_size="64K",
                        env={"MINI_OSS_SWEEP_INTERVAL": "0.2"})
    stub = node.stub()
    data = payload(40 * CHUNK, seed=10)
    session = create(stub, "sliced-ttl", data, chunk_size=CHUNK, slices=2)
    moving = session.slices[1]
    part = data[moving.slice_offset:moving.slice_offset + moving.file_size]
    deadline = time.monotonic() + 6
    offset = 0
    while time.monotonic() < deadline:
        upload_data(stub, moving.upload_id, part, CHUNK, start=offset, end=offset + CHUNK)
        offset += CHUNK
        time.sleep(0.5)
        states = {get_session(stub, u).state
                  for u in (session.upload_id, session.slices[0].upload_id, moving.upload_id)}
        assert states == {ACTIVE}, "a member expired while a slice was moving"
    wait_until(lambda: get_session(stub, session.upload_id).state == ABORTED, 15,
               what="the idle sliced session to expire")
    assert {s.state for s in get_session(stub, session.upload_id).slices} == {ABORTED}
    assert parts_of(node, session) == []


def test_a_slice_ended_behind_the_nodes_back_makes_the_commit_end_them_all(node_factory):
    node = node_factory(workers=1, default_chunk_size="64K")
    stub = node.stub()
    data = payload(256 * KiB, seed=11)
    session = create(stub, "sliced-broken", data, chunk_size=CHUNK, slices=2)
    send_all(stub, session, data)
    # What a crash between ending two members could leave: one slice ended, the rest ACTIVE.
    db = sqlite3.connect(node.data_dir / "catalog.db")
    with db:
        db.execute("UPDATE sessions SET state = 3 WHERE upload_id = ?",
                   (session.slices[0].upload_id,))
    db.close()
    with expect_error("NOT_FOUND", "SESSION_NOT_FOUND"):
        commit(stub, session)
    after = get_session(stub, session.upload_id)
    assert after.state == ABORTED and {s.state for s in after.slices} == {ABORTED}
    assert [n for n in parts_of(node, session) if session.slices[0].upload_id not in n] == []
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "sliced-broken")


def test_a_postgresql_catalog_from_before_slices_gains_their_columns(postgres_server):
    import psycopg

    from node.catalog import postgres
    url = postgres_server.new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(postgres.SCHEMA)  # the sessions table as schema version 2 made it
        conn.execute("INSERT INTO sessions VALUES ('u1', 'o', 'f', 3, 4096, 0, '', 1, '', '{}', 0,"
                     " '', 'c', 1, 1, 1, NULL)")
    postgres.PostgresBackend(url).prepare()
    postgres.PostgresBackend(url).prepare()  # a second node's start changes nothing more
    catalog = postgres.PostgresCatalog(url)
    try:
        assert_an_old_plain_session(catalog)
    finally:
        catalog.close()
