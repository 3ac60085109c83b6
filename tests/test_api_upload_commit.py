"""API.md "Upload rules", "Commit and layout" and the upload half of "Errors", against a real node:
preconditions, streams that end early, resumes, committed sessions, CreateUploadSession's other
fields and the on-disk layout (the chunk rules are in test_api_upload.py; one file each, so
the two halves run in parallel).

Every test talks to the node through the raw generated stubs (see tests/contract.py). A test that
sends something bad also checks that it wrote or corrupted nothing: the session's
`uploaded_offset` is unchanged (or equals the error's `uploaded_offset`), nothing past it is kept in
the part file, and finishing the upload with the right bytes gives the right SHA-256.
"""

from __future__ import annotations

import os
import re

import pytest

from node.pb import oss_pb2 as pb
from node.pb import oss_pb2_grpc
from tests.contract import (ABORTED, ACTIVE, COMMITTED, channels_by_worker, crc32, create,
                            download_all, expect_error, get_session, hold, index_link, KiB, msg,
                            node_info, object_files, part_file, payload, put, raises, sha256_hex,
                            split, stat, upload_chunks, upload_data, wait_until, CHUNK,
                            check_failed, finish)

SHARED_NODE = True  # tests that take `node`/`stub` share one node per catalog (conftest)


# --- preconditions ------------------------------------------------------------------------

def test_if_absent_fails_at_create_when_the_object_exists(node, stub):
    put(stub, "obj", payload(100))
    with expect_error("ALREADY_EXISTS", "OBJECT_EXISTS"):
        create(stub, "obj", 100, if_absent=True)
    assert stub.ListUploadSessions(pb.ListUploadSessionsRequest()).sessions == []
    # if_absent on another id is fine.
    data = payload(100, 3)
    put(stub, "other", data, if_absent=True)


@pytest.mark.own_node
def test_if_absent_fails_at_commit_when_another_upload_committed_meanwhile(node, stub):
    data = payload(2 * CHUNK, 1)
    s = create(stub, "obj", data, if_absent=True)
    upload_data(stub, s.upload_id, data, CHUNK, end=CHUNK)
    winner = put(stub, "obj", payload(100, 2)).object
    caught = raises(lambda: upload_data(stub, s.upload_id, data, CHUNK, start=CHUNK),
                    "ALREADY_EXISTS", "OBJECT_EXISTS")
    session = check_failed(stub, node, s.upload_id, caught)
    assert session.state == ABORTED
    assert stat(stub, "obj") == winner
    wait_until(lambda: part_file(node.data_dir, s.upload_id) is None, 5, what="part file freed")
    assert object_files(node.data_dir, upload_id=s.upload_id) == []


def test_if_generation_match_fails_at_create(node, stub):
    v1 = put(stub, "obj", payload(100)).object
    with expect_error("FAILED_PRECONDITION", "GENERATION_MISMATCH"):
        create(stub, "obj", 100, if_generation_match=v1.generation + "x")
    # ... and when the object does not exist at all.
    with expect_error("FAILED_PRECONDITION", "GENERATION_MISMATCH"):
        create(stub, "missing", 100, if_generation_match=v1.generation)
    assert stub.ListUploadSessions(pb.ListUploadSessionsRequest()).sessions == []
    # A matching generation commits a new generation.
    data = payload(200, 5)
    v2 = put(stub, "obj", data, if_generation_match=v1.generation).object
    assert v2.generation != v1.generation and stat(stub, "obj") == v2


@pytest.mark.parametrize("change", ["overwrite", "delete"])
def test_if_generation_match_fails_at_commit(node, stub, change):
    v1 = put(stub, "obj", payload(100, 1)).object
    data = payload(2 * CHUNK, 2)
    s = create(stub, "obj", data, if_generation_match=v1.generation)
    upload_data(stub, s.upload_id, data, CHUNK, end=CHUNK)
    if change == "overwrite":
        current = put(stub, "obj", payload(300, 3)).object
    else:
        stub.DeleteObject(pb.DeleteObjectRequest(object_id="obj"))
        current = None
    caught = raises(lambda: upload_data(stub, s.upload_id, data, CHUNK, start=CHUNK),
                    "FAILED_PRECONDITION", "GENERATION_MISMATCH")
    session = check_failed(stub, node, s.upload_id, caught)
    assert session.state == ABORTED
    if current is None:
        with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
            stat(stub, "obj")
    else:
        assert stat(stub, "obj") == current
    wait_until(lambda: part_file(node.data_dir, s.upload_id) is None, 5, what="part file freed")
    assert object_files(node.data_dir, upload_id=s.upload_id) == []


def test_if_absent_and_if_generation_match_must_both_hold(node, stub):
    # Object absent: if_absent holds, the generation cannot match.
    with expect_error("FAILED_PRECONDITION", "GENERATION_MISMATCH"):
        create(stub, "obj", 10, if_absent=True, if_generation_match="g")
    v1 = put(stub, "obj", payload(10)).object
    # Object present with that generation: the generation holds, if_absent does not.
    with expect_error("ALREADY_EXISTS", "OBJECT_EXISTS"):
        create(stub, "obj", 10, if_absent=True, if_generation_match=v1.generation)
    assert stat(stub, "obj") == v1


# --- streams that end early, resume, committed sessions ------------------------------------

@pytest.mark.own_node
def test_stream_ending_early_returns_the_new_offset_and_a_later_stream_resumes(node, stub):
    data = payload(5 * CHUNK + 17)
    s = create(stub, "obj", data)
    assert s.uploaded_offset == 0 and s.state == ACTIVE
    resp = upload_data(stub, s.upload_id, data, CHUNK, end=2 * CHUNK)
    assert resp.session.state == ACTIVE
    assert resp.session.uploaded_offset == 2 * CHUNK
    assert not resp.HasField("object")
    assert get_session(stub, s.upload_id).uploaded_offset == 2 * CHUNK
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "obj")
    resp = upload_data(stub, s.upload_id, data, CHUNK, start=2 * CHUNK, end=3 * CHUNK + 5)
    assert resp.session.uploaded_offset == 3 * CHUNK + 5
    finish(stub, s.upload_id, data)


def test_upload_on_a_committed_session_returns_it_even_after_replace_and_delete(node, stub):
    data = payload(2 * CHUNK + 3)
    first = put(stub, "obj", data)
    uid = first.session.upload_id
    for when in ("committed", "replaced", "deleted"):
        if when == "replaced":
            put(stub, "obj", payload(50, 9))
        elif when == "deleted":
            stub.DeleteObject(pb.DeleteObjectRequest(object_id="obj"))
        # A full retry: every chunk is a duplicate.
        resp = upload_data(stub, uid, data, CHUNK)
        assert resp.session.state == COMMITTED, when
        assert resp.session.uploaded_offset == len(data), when
        assert resp.object == first.object, when
        # A bare retry of the first message.
        resp = upload_chunks(stub, uid, [(0, b"")])
        assert resp.object == first.object, when
        # Its chunks' CRCs are still checked (before a chunk is ignored).
        with expect_error("DATA_LOSS", "CHECKSUM_MISMATCH"):
            upload_chunks(stub, uid, [msg(0, data[:CHUNK], uid, crc32_=crc32(data[:CHUNK]) ^ 1)])
    assert get_session(stub, uid).state == COMMITTED


def test_two_streams_on_one_session_second_is_session_busy(node, stub):
    data = payload(4 * CHUNK)
    s = create(stub, "obj", data)
    with hold(stub, msg(0, data[:CHUNK], s.upload_id)) as (feed, call, busy):
        # A second stream that carries data fails at once too (well before its 5 s deadline,
        # while the first is still open), and writes nothing.
        with expect_error("ABORTED", "SESSION_BUSY"):
            upload_chunks(stub, s.upload_id, [(CHUNK, payload(CHUNK, 5))], timeout=5)
        for off, piece in split(data, CHUNK, CHUNK):
            feed.send(msg(off, piece))
        feed.close()
        resp = call.result(timeout=10)
    assert resp.session.state == COMMITTED
    assert resp.object.sha256 == sha256_hex(data)


def test_session_busy_error_carries_uploaded_offset(node, stub):
    """ "metadata, e.g. uploaded_offset on every failed Upload" (API.md, Errors)."""
    data = payload(4 * CHUNK)
    s = create(stub, "obj", data)
    upload_data(stub, s.upload_id, data, CHUNK, end=CHUNK)
    with hold(stub, msg(CHUNK, data[CHUNK:2 * CHUNK], s.upload_id)) as (feed, call, busy):
        # The durable value: CHUNK, or 2*CHUNK if the held stream checkpointed already.
        assert busy.uploaded_offset in (CHUNK, 2 * CHUNK), busy
        feed.close()
        call.result(timeout=10)


def test_session_busy_across_workers_and_resume_on_another_worker(node_factory):
    node = node_factory(workers=2)
    chans = channels_by_worker(node, 2)
    try:
        a, b = (oss_pb2_grpc.ObjectStorageStub(c) for c in chans.values())
        data = payload(6 * CHUNK)
        s = create(a, "obj", data)
        with hold(a, msg(0, data[:CHUNK], s.upload_id)) as (feed, call, _):
            with expect_error("ABORTED", "SESSION_BUSY"):   # from the other worker
                upload_chunks(b, s.upload_id, [(CHUNK, data[CHUNK:2 * CHUNK])], timeout=5)
            with expect_error("ABORTED", "SESSION_BUSY"):
                b.AbortUploadSession(pb.AbortUploadSessionRequest(upload_id=s.upload_id))
            feed.send(msg(CHUNK, data[CHUNK:2 * CHUNK]))
            feed.close()
            assert call.result(timeout=10).session.uploaded_offset == 2 * CHUNK
        # Resume on the other worker (which never saw this session's hash state), then back.
        assert upload_data(b, s.upload_id, data, CHUNK, start=2 * CHUNK,
                           end=4 * CHUNK).session.uploaded_offset == 4 * CHUNK
        resp = upload_data(a, s.upload_id, data, CHUNK, start=4 * CHUNK)
        assert resp.session.state == COMMITTED and resp.object.sha256 == sha256_hex(data)
        assert download_all(b, "obj").data == data
    finally:
        for c in chans.values():
            c.close()


@pytest.mark.own_node
def test_upload_to_an_unknown_session_is_session_not_found(node, stub):
    with expect_error("NOT_FOUND", "SESSION_NOT_FOUND"):
        upload_chunks(stub, "no-such-upload", [(0, b"abc")])
    assert not (node.data_dir / "parts").exists() or not list((node.data_dir / "parts").iterdir())


@pytest.mark.own_node
def test_upload_to_an_aborted_session_is_session_not_found(node, stub):
    data = payload(2 * CHUNK)
    s = create(stub, "obj", data)
    upload_data(stub, s.upload_id, data, CHUNK, end=CHUNK)
    stub.AbortUploadSession(pb.AbortUploadSessionRequest(upload_id=s.upload_id))
    with expect_error("NOT_FOUND", "SESSION_NOT_FOUND"):
        upload_data(stub, s.upload_id, data, CHUNK, start=CHUNK)
    assert part_file(node.data_dir, s.upload_id) is None
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "obj")


def test_zero_byte_object(node, stub):
    s = create(stub, "empty", 0, file_name="empty.txt")
    assert s.file_size == 0 and s.state == ACTIVE
    resp = upload_chunks(stub, s.upload_id, [(0, b"")])
    assert resp.session.state == COMMITTED
    assert resp.object.size == 0 and resp.object.sha256 == sha256_hex(b"")
    assert resp.object.generation == s.upload_id
    got = list(stub.Download(pb.DownloadRequest(object_id="empty"), timeout=10))
    assert len(got) == 1 and got[0].HasField("object") and got[0].data == b""
    assert stat(stub, "empty").size == 0
    [f] = object_files(node.data_dir, upload_id=s.upload_id)
    assert f.stat().st_size == 0


# --- other CreateUploadSession fields -----------------------------------------------------

def test_file_size_limits(node_factory):
    node = node_factory(workers=1, max_object_size=10_000)
    stub = node.stub()
    assert node_info(stub).max_object_size == 10_000
    with expect_error("INVALID_ARGUMENT", "INVALID_ARGUMENT"):
        create(stub, "neg", -1)
    with expect_error("RESOURCE_EXHAUSTED", "TOO_LARGE"):
        create(stub, "big", 10_001)
    assert stub.ListUploadSessions(pb.ListUploadSessionsRequest()).sessions == []
    put(stub, "max", payload(10_000))


def test_content_type_and_metadata_round_trip_and_limits(node, stub):
    meta = {"a": "1", "owner": "ünïcode ✓"}
    data = payload(100)
    info = put(stub, "obj", data, content_type="text/plain; charset=utf-8", metadata=meta).object
    assert info.content_type == "text/plain; charset=utf-8" and dict(info.metadata) == meta
    assert stat(stub, "obj").metadata == info.metadata
    assert download_all(stub, "obj").info == info
    put(stub, "ct255", data, content_type="x" * 255)
    with expect_error("INVALID_ARGUMENT", "INVALID_ARGUMENT"):
        create(stub, "ct256", 10, content_type="x" * 256)
    with expect_error("INVALID_ARGUMENT", "INVALID_ARGUMENT"):
        create(stub, "meta", 10, metadata={f"k{i}": "v" * 1000 for i in range(9)})
    with expect_error("INVALID_ARGUMENT", "INVALID_ARGUMENT"):
        create(stub, "meta", 10, metadata={"k": "v" * (8 * KiB)})
    # Well under 8 KiB in total is fine.
    put(stub, "meta-ok", data, metadata={f"k{i}": "v" * 900 for i in range(8)})


def test_upload_ids_are_unique_and_url_safe(node, stub):
    ids = [create(stub, "obj", 10).upload_id for _ in range(20)]
    assert len(set(ids)) == 20
    for uid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", uid), uid


# --- on-disk layout -----------------------------------------------------------------------

def test_part_file_layout_while_uploading(node, stub):
    data = payload(3 * CHUNK)
    s = create(stub, "obj-1", data, file_name="report.final.pdf")
    upload_data(stub, s.upload_id, data, CHUNK, end=CHUNK)
    part = part_file(node.data_dir, s.upload_id)
    assert part is not None
    assert part.name == f"obj-1_report.final.pdf.part.{s.upload_id}"
    assert part.parent == node.data_dir / "parts"
    assert part.stat().st_size >= CHUNK


def test_commit_layout_objects_file_and_relative_index_symlink(node, stub):
    data = payload(3 * CHUNK)
    resp = put(stub, "obj-1", data, file_name="report.final.pdf")
    uid = resp.session.upload_id
    final = node.data_dir / "objects" / f"obj-1_report.final_{uid}.pdf"
    assert final.is_file(), sorted(os.listdir(node.data_dir / "objects"))
    assert final.read_bytes() == data
    link = index_link(node.data_dir, "obj-1")
    assert link.is_symlink()
    assert os.readlink(link) == f"../objects/{final.name}"
    assert link.resolve() == final.resolve()
    assert part_file(node.data_dir, uid) is None
    # A name without extension.
    resp = put(stub, "noext", data, file_name="README")
    final = node.data_dir / "objects" / f"noext_README_{resp.session.upload_id}"
    assert final.is_file()
    assert os.readlink(index_link(node.data_dir, "noext")) == f"../objects/{final.name}"


def test_more_streams_than_pool_threads_each_commit_their_exact_bytes(node_factory):
    """With more upload streams than I/O threads, a stream stops receiving its next chunk
    while its last one is written (memory per stream); every byte still lands, in order."""
    import concurrent.futures

    node = node_factory(workers=1, io_threads=1)
    stub = node.stub()
    datas = [payload(300 * KiB + i, i) for i in range(4)]
    sessions = [create(stub, f"busy{i}", d) for i, d in enumerate(datas)]

    def send(i: int) -> pb.UploadResponse:
        return upload_data(stub, sessions[i].upload_id, datas[i], 16 * KiB)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(send, range(4)))
    for data, resp in zip(datas, responses):
        assert resp.session.state == COMMITTED and resp.object.sha256 == sha256_hex(data)
        assert download_all(stub, resp.object.object_id).data == data
