"""API.md "One-call put" against a real node: PutObject stores a whole small object in one call.

Through the raw generated stubs (tests/contract.py), as any other client would see it: what a
successful put commits (the object, its COMMITTED session, the files), every refusal with its
code and reason leaving nothing behind, the limits it counts against, and what a crash in the
middle of one leaves (nothing visible; its file removed once unheld and a minute old).
"""

from __future__ import annotations

import fcntl
import os
import time

import grpc
import pytest

from node.pb import oss_pb2 as pb
from tests.contract import (COMMITTED, KiB, all_names_fit, caught_of, create, crc32, crc32c,
                            download_all, expect_error, get_session, list_all_sessions, msg,
                            payload, put, sha256_hex, stat, tree, upload_chunks, wait_until)

SHARED_NODE = True  # tests that take `node`/`stub` share one node per catalog (conftest)


def put_object(stub, object_id: str, data: bytes, **fields) -> pb.ObjectInfo:
    fields.setdefault("file_name", "note.txt")
    return stub.PutObject(pb.PutObjectRequest(object_id=object_id, data=data, **fields),
                          timeout=30).object


def on_disk(node) -> set[str]:
    """Everything under parts/, objects/ and index/ (the catalog's own files aside)."""
    return {top + "/" + name for top in ("parts", "objects", "index")
            for name in tree(node.data_dir / top)}


def test_put_commits_the_object_and_its_session(node, stub):
    data = payload(20 * KiB, 1)
    info = put_object(stub, "att-1", data, file_name="invoice.pdf", crc32=crc32(data),
                      crc32c=crc32c(data), sha256=sha256_hex(data).upper(),
                      content_type="application/pdf", metadata={"owner": "ana"})
    assert (info.object_id, info.file_name, info.size, info.sha256) == (
        "att-1", "invoice.pdf", len(data), sha256_hex(data))
    assert info.content_type == "application/pdf" and dict(info.metadata) == {"owner": "ana"}
    assert info.generation and info.created_at_unix_ms > 0
    assert stat(stub, "att-1") == info
    got = download_all(stub, "att-1")
    assert got.data == data and got.info == info
    # The generation is an upload id whose session is COMMITTED, and an Upload on it replays.
    session = get_session(stub, info.generation)
    assert (session.state, session.object_id, session.file_size, session.uploaded_offset) == (
        COMMITTED, "att-1", len(data), len(data))
    replay = upload_chunks(stub, info.generation, [msg(0, data)])
    assert replay.object == info
    assert list_all_sessions(stub) == []  # nothing ACTIVE was ever left
    # On disk: one object file, the index entry pointing at it, nothing in parts/.
    (only,) = os.listdir(node.data_dir / "objects")
    assert info.generation in only and only.endswith(".pdf")
    assert os.readlink(node.data_dir / "index" / "att-1") == f"../objects/{only}"
    assert os.listdir(node.data_dir / "parts") == []
    assert (node.data_dir / "objects" / only).read_bytes() == data


@pytest.mark.own_node
def test_put_replaces_the_current_version_and_frees_its_file(node, stub):
    first = put(stub, "doc", payload(3000, 1)).object  # a session-made version
    second = put_object(stub, "doc", payload(100, 2), if_generation_match=first.generation)
    assert second.generation != first.generation
    third = put_object(stub, "doc", b"", file_name="empty")  # zero bytes, no precondition
    assert (third.size, third.sha256) == (0, sha256_hex(b""))
    assert stat(stub, "doc") == third and download_all(stub, "doc").data == b""
    wait_until(lambda: len(os.listdir(node.data_dir / "objects")) == 1, 5,
               what="the replaced versions' files freed")
    fresh = put_object(stub, "new-doc", b"x", if_absent=True)
    assert fresh.size == 1


def test_longest_names_fit_on_disk(node, stub):
    file_name = "é" * 120 + ".tar.gz"  # 247 bytes of UTF-8, the longest object id beside it
    info = put_object(stub, "i" * 128, b"long names", file_name=file_name)
    assert info.file_name == file_name and stat(stub, "i" * 128) == info
    assert all_names_fit(node.data_dir) == []
    assert download_all(stub, "i" * 128).data == b"long names"


def test_every_refusal_has_its_reason_and_leaves_nothing(node, stub):
    kept = put_object(stub, "kept", b"the original")
    before = on_disk(node)
    data = payload(5000, 3)
    cases = [
        (dict(crc32=crc32(data) ^ 1), "DATA_LOSS", "CHECKSUM_MISMATCH"),
        (dict(crc32c=crc32c(data) ^ 1), "DATA_LOSS", "CHECKSUM_MISMATCH"),
        (dict(sha256=sha256_hex(b"other")), "DATA_LOSS", "SHA256_MISMATCH"),
        (dict(sha256="abc"), "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        (dict(if_absent=True), "ALREADY_EXISTS", "OBJECT_EXISTS"),
        (dict(if_generation_match="0" * 24), "FAILED_PRECONDITION", "GENERATION_MISMATCH"),
        (dict(file_name="a/b"), "INVALID_ARGUMENT", "INVALID_NAME"),
        (dict(file_name=""), "INVALID_ARGUMENT", "INVALID_NAME"),
        (dict(metadata={"k": "v" * (9 * KiB)}), "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        (dict(content_type="x" * 300), "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    ]
    for fields, code, reason in cases:
        with expect_error(code, reason):
            put_object(stub, "kept", data, **fields)
        assert stat(stub, "kept") == kept, fields
        assert on_disk(node) == before, fields
    for bad_id in ("", "..", "a/b", "x" * 129):
        with expect_error("INVALID_ARGUMENT", "INVALID_NAME"):
            put_object(stub, bad_id, data)
    with expect_error("FAILED_PRECONDITION", "GENERATION_MISMATCH"):
        put_object(stub, "absent", data, if_generation_match=kept.generation)
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "absent")
    assert on_disk(node) == before
    assert list_all_sessions(stub) == []


def test_racing_if_absent_puts_commit_exactly_once(node_factory):
    node = node_factory(workers=2)
    stub = node.stub()
    bodies = [payload(3000, seed) for seed in range(12)]
    calls = [stub.PutObject.future(pb.PutObjectRequest(object_id="race", file_name="r",
                                                       data=body, if_absent=True), timeout=30)
             for body in bodies]
    won, lost = [], []
    for body, call in zip(bodies, calls):
        try:
            won.append((body, call.result().object))
        except grpc.RpcError as exc:
            lost.append(caught_of(exc))
    assert len(won) == 1, won
    assert {(c.code, c.reason) for c in lost} == {("ALREADY_EXISTS", "OBJECT_EXISTS")}
    body, info = won[0]
    assert stat(stub, "race") == info and download_all(stub, "race").data == body
    wait_until(lambda: len(os.listdir(node.data_dir / "objects")) == 1, 5,
               what="the losers' files freed")
    assert os.listdir(node.data_dir / "parts") == []


def test_with_one_put_thread_and_one_io_thread_concurrent_puts_and_uploads_all_commit(node_factory):
    """Puts run in their own threads (--put-threads), sessions in the I/O threads; with one of
    each, concurrent puts and uploads all commit (they meet in the catalog's group commit) and
    each object reads back as sent."""
    node = node_factory(workers=1, put_threads=1, io_threads=1)
    stub = node.stub()
    puts = {f"p{i}": payload(2000 + i, i) for i in range(16)}
    uploads = {f"u{i}": payload(3 * KiB + i, 100 + i) for i in range(4)}
    sessions = {oid: create(stub, oid, data) for oid, data in uploads.items()}
    calls = [stub.PutObject.future(pb.PutObjectRequest(object_id=oid, file_name="f", data=data),
                                   timeout=60) for oid, data in puts.items()]
    streams = [stub.Upload.future(iter([msg(0, data, sessions[oid].upload_id)]), timeout=60)
               for oid, data in uploads.items()]
    assert all(call.result().object.size == len(data) for call, data in zip(calls, puts.values()))
    assert all(s.result().session.state == COMMITTED for s in streams)
    for oid, data in {**puts, **uploads}.items():
        assert download_all(stub, oid).data == data


def test_size_limits(node_factory):
    node = node_factory(workers=1, max_chunk_size=64 * KiB, default_chunk_size=16 * KiB,
                        max_object_size=100 * KiB)
    stub = node.stub()
    with expect_error("INVALID_ARGUMENT", "CHUNK_TOO_LARGE") as err:
        put_object(stub, "big", payload(64 * KiB + 1))
    assert err.metadata["max_chunk_size"] == str(64 * KiB)
    assert put_object(stub, "big", payload(64 * KiB)).size == 64 * KiB  # exactly the limit
    small = node_factory(workers=1, max_object_size=10_000)
    with expect_error("RESOURCE_EXHAUSTED", "TOO_LARGE"):
        put_object(small.stub(), "big", payload(10_001))
    assert os.listdir(small.data_dir / "objects") == []


def test_disk_reserve_refuses_puts(node_factory):
    node = node_factory(workers=1, env={"MINI_OSS_DISK_RESERVE": str(2 ** 62)})
    with expect_error("RESOURCE_EXHAUSTED", "DISK_FULL"):
        put_object(node.stub(), "x", b"data")
    assert os.listdir(node.data_dir / "objects") == [] and os.listdir(node.data_dir / "parts") == []


def test_a_put_counts_as_a_stream_but_holds_no_session(node_factory, tmp_path):
    node = node_factory(workers=1, env={"MINI_OSS_MAX_STREAMS_PER_CLIENT": "1",
                                        "MINI_OSS_MAX_SESSIONS": "1",
                                        "MINI_OSS_FAILPOINTS": "put_written=pause:60",
                                        "MINI_OSS_FAILPOINTS_ONCE": str(tmp_path)})
    stub = node.stub()
    create(stub, "slow", 1000)  # the node's one session place is taken
    slow_put = stub.PutObject.future(pb.PutObjectRequest(object_id="quick", file_name="a",
                                                         data=b"no session needed"), timeout=30)
    # It waits after writing its file: the put is at work and holds its place.
    wait_until(lambda: "put_written" in os.listdir(tmp_path), 10, what="the put at work")
    assert any(".put." in n for n in os.listdir(node.data_dir / "parts"))
    with expect_error("RESOURCE_EXHAUSTED", "TOO_MANY_STREAMS"):
        download_all(stub, "quick")
    (tmp_path / "put_written.resume").touch()
    assert slow_put.result().object.size == 17
    assert download_all(stub, "quick").data == b"no session needed"  # its place was given back


def serving(node) -> bool:
    try:
        node.stub().GetNodeInfo(pb.GetNodeInfoRequest(), timeout=2)
        return True
    except grpc.RpcError:
        return False


def _age(path) -> None:
    old = time.time() - 120
    os.utime(path, (old, old))


@pytest.mark.parametrize("point", ["put_written", "commit_published"])
def test_a_put_cut_short_by_a_crash_is_never_visible(node_factory, tmp_path, point):
    once = tmp_path / "once"
    once.mkdir()
    node = node_factory(workers=1, env={"MINI_OSS_FAILPOINTS": f"{point}=crash",
                                        "MINI_OSS_FAILPOINTS_ONCE": str(once)})
    stub = node.stub()
    with pytest.raises(grpc.RpcError) as died:
        put_object(stub, "lost", payload(1000))
    assert died.value.code() == grpc.StatusCode.UNAVAILABLE  # the worker died under the call
    assert os.listdir(once) == [point], "the failpoint did not fire: the test proved nothing"
    wait_until(lambda: serving(node), 30, what="the worker replaced")
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(node.stub(), "lost")
    left = os.listdir(node.data_dir / "parts")  # cut before the rename: its .put. file
    assert [n.startswith("lost_") and ".put." in n for n in left] == (
        [True] if point == "put_written" else []), left
    for name in left:
        _age(node.data_dir / "parts" / name)  # a minute later
    node.restart()
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(node.stub(), "lost")
    assert os.listdir(node.data_dir / "parts") == []
    assert not os.path.lexists(node.data_dir / "index" / "lost")
    # Cut after the rename into objects/: that file is set aside for an operator, not served.
    quarantined = node.data_dir / "quarantine" / "objects"
    set_aside = os.listdir(quarantined) if quarantined.exists() else []
    assert len(set_aside) == (1 if point == "commit_published" else 0), set_aside
    assert os.listdir(node.data_dir / "objects") == []
    assert put_object(node.stub(), "lost", b"again").size == 5


def test_recovery_leaves_a_held_or_young_put_file_alone(node_factory):
    node = node_factory(workers=1)
    node.stop()
    parts = node.data_dir / "parts"
    held, young = parts / ("obj_a.bin.put." + "1" * 24), parts / ("obj_b.bin.put." + "2" * 24)
    for path in (held, young):
        path.write_bytes(b"in flight")
    _age(held)
    fd = os.open(held, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another node's put, between its write and its commit
        node.start()
        assert held.exists() and young.exists()
        node.stop()
    finally:
        os.close(fd)
    _age(young)
    node.start()
    assert os.listdir(parts) == []
    assert not (node.data_dir / "quarantine").exists() or not any(
        (node.data_dir / "quarantine").rglob("*.put.*"))


def test_the_sweep_removes_a_dead_puts_file_while_the_node_serves(node_factory):
    node = node_factory(workers=1, env={"MINI_OSS_SWEEP_INTERVAL": "0.2"})
    parts = node.data_dir / "parts"
    dead, held = parts / ("obj_c.bin.put." + "3" * 24), parts / ("obj_d.bin.put." + "4" * 24)
    fd = os.open(held, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held before it looks old: no sweep may catch it free
        for path in (dead, held):
            path.write_bytes(b"cut short")
            _age(path)
        wait_until(lambda: not dead.exists(), 10, what="the sweep removing the dead put's file")
        assert held.exists()  # (the same sweep looked at both: one pass lists parts/ once)
    finally:
        os.close(fd)
    wait_until(lambda: not held.exists(), 10, what="the file once its holder let go")
