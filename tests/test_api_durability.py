"""API.md durability: resume after a cancelled stream, after kill -9 of the node, after a worker
crash and after a graceful restart; committed objects survive kill -9; SIGTERM drains.

`node.kill()` is kill -9 of the whole process group; `node.start()` starts a new node on the same
data directory (on a new port, so every test takes a fresh stub afterwards).
"""

from __future__ import annotations

import signal
import time

import grpc
import psutil
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from node.pb import oss_pb2 as pb
from node.pb import oss_pb2_grpc
from tests.contract import (ABORTED, ACTIVE, COMMITTED, create, download_all, expect_error,
                            get_session, hold, KiB, list_all_objects, list_all_sessions, MiB, msg,
                            node_info, payload, put, sha256_hex, split, stat, upload_chunks,
                            upload_data, wait_until)

SHARED_NODE = True  # tests that take `node`/`stub` share one node per catalog (conftest)

CHUNK = 16 * KiB


def resume(stub, upload_id: str, data: bytes, chunk: int = CHUNK, timeout: float = 15.0):
    """Resume an upload from GetUploadSession's offset, retrying SESSION_BUSY / UNAVAILABLE with
    backoff as the retry contract allows (a dead stream's claim may take a moment to go)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            start = get_session(stub, upload_id).uploaded_offset
            return upload_data(stub, upload_id, data, chunk, start=start)
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE) \
                    or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def info_reasons(exc: grpc.RpcError) -> list[str]:
    """The ErrorInfo reasons an error carries (none for errors made by gRPC itself)."""
    status = rpc_status.from_call(exc)
    if status is None:
        return []
    out = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            out.append(info.reason)
    return out


def check_object(stub, object_id: str, data: bytes) -> pb.ObjectInfo:
    info = stat(stub, object_id)
    assert info.size == len(data) and info.sha256 == sha256_hex(data)
    got = download_all(stub, object_id)
    assert got.data == data and sha256_hex(got.data) == info.sha256
    return info


def test_resume_after_a_client_cancelled_stream(node, stub):
    data = payload(8 * CHUNK + 5)
    s = create(stub, "obj", data)
    with hold(stub, msg(0, data[:CHUNK], s.upload_id)) as (feed, call, _):
        for off, piece in split(data[:4 * CHUNK], CHUNK, CHUNK):
            feed.send(msg(off, piece))
        time.sleep(0.3)   # let the node take the chunks already sent
        call.cancel()
    # The node checkpoints what it verified when the stream ends, whatever ended it.
    got = wait_until(lambda: (lambda g: g if g.uploaded_offset == 4 * CHUNK else None)(
        get_session(stub, s.upload_id)), 10, what="uploaded_offset == bytes sent")
    assert got.state == ACTIVE
    resp = resume(stub, s.upload_id, data)
    assert resp.session.state == COMMITTED
    check_object(stub, "obj", data)


def test_kill_9_mid_upload_then_restart_resumes(node):
    stub = node.stub()
    data = payload(2 * MiB + 3, 1)
    s = create(stub, "obj", data, chunk_size=CHUNK)
    with hold(stub, msg(0, data[:CHUNK], s.upload_id), timeout=60) as (feed, call, _):
        for off, piece in split(data[:MiB], CHUNK, CHUNK):
            feed.send(msg(off, piece))
        time.sleep(0.3)
        node.kill()
        exc = call.exception(timeout=10)
        assert exc is not None and exc.code() == grpc.StatusCode.UNAVAILABLE, exc
    node.start()
    stub = node.stub()
    got = get_session(stub, s.upload_id)
    assert got.state == ACTIVE and got.object_id == "obj" and got.file_size == len(data)
    assert 0 <= got.uploaded_offset <= MiB
    assert [x.upload_id for x in list_all_sessions(stub)] == [s.upload_id]
    resp = resume(stub, s.upload_id, data)
    assert resp.session.state == COMMITTED
    assert resp.object.sha256 == sha256_hex(data)
    check_object(stub, "obj", data)


def test_checkpointed_offset_survives_kill_9_exactly(node):
    stub = node.stub()
    data = payload(6 * CHUNK, 2)
    s = create(stub, "obj", data, sha256=sha256_hex(data).upper())
    resp = upload_data(stub, s.upload_id, data, CHUNK, end=3 * CHUNK + 7)
    assert resp.session.uploaded_offset == 3 * CHUNK + 7
    node.kill()
    node.start()
    stub = node.stub()
    got = get_session(stub, s.upload_id)
    assert got.state == ACTIVE and got.uploaded_offset == 3 * CHUNK + 7
    assert got.sha256 == sha256_hex(data)
    # Nothing before the checkpoint needs re-sending; a gap is still a gap.
    with expect_error("FAILED_PRECONDITION", "OFFSET_MISMATCH"):
        upload_data(stub, s.upload_id, data, CHUNK, start=4 * CHUNK)
    resp = resume(stub, s.upload_id, data)
    assert resp.session.state == COMMITTED
    check_object(stub, "obj", data)


def test_an_error_offset_is_durable_across_kill_9(node):
    stub = node.stub()
    data = payload(6 * CHUNK, 3)
    s = create(stub, "obj", data)
    stream = [(0, data[:CHUNK]), (CHUNK, data[CHUNK:2 * CHUNK]), (3 * CHUNK, data[3 * CHUNK:])]
    with expect_error("FAILED_PRECONDITION", "OFFSET_MISMATCH") as err:
        upload_chunks(stub, s.upload_id, stream)
    assert err.uploaded_offset == 2 * CHUNK
    node.kill()
    node.start()
    stub = node.stub()
    assert get_session(stub, s.upload_id).uploaded_offset == 2 * CHUNK
    resp = resume(stub, s.upload_id, data)
    assert resp.session.state == COMMITTED
    check_object(stub, "obj", data)


@pytest.mark.own_node
def test_committed_objects_and_ended_sessions_survive_kill_9(node):
    stub = node.stub()
    a = payload(100_000, 1)
    b1, b2 = payload(5000, 2), payload(7000, 3)
    ra = put(stub, "a", a, file_name="a.txt", content_type="text/plain", metadata={"k": "v"})
    put(stub, "b", b1)
    rb = put(stub, "b", b2)
    put(stub, "gone", payload(10, 4))
    stub.DeleteObject(pb.DeleteObjectRequest(object_id="gone"))
    rz = put(stub, "zero", b"")
    aborted = create(stub, "x", 10)
    stub.AbortUploadSession(pb.AbortUploadSessionRequest(upload_id=aborted.upload_id))
    before = list_all_objects(stub)
    node.kill()
    node.start()
    stub = node.stub()
    assert list_all_objects(stub) == before
    assert [o.object_id for o in before] == ["a", "b", "zero"]
    assert check_object(stub, "a", a) == ra.object
    assert check_object(stub, "b", b2) == rb.object
    assert check_object(stub, "zero", b"") == rz.object
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "gone")
    assert get_session(stub, ra.session.upload_id).state == COMMITTED
    assert get_session(stub, aborted.upload_id).state == ABORTED
    assert list_all_sessions(stub) == []
    # A retry of the committed upload after the crash still gets its ObjectInfo.
    resp = upload_data(stub, ra.session.upload_id, a, CHUNK)
    assert resp.session.state == COMMITTED and resp.object == ra.object


def test_sessions_survive_a_graceful_restart(node):
    stub = node.stub()
    data = payload(4 * CHUNK, 5)
    s = create(stub, "obj", data)
    upload_data(stub, s.upload_id, data, CHUNK, end=2 * CHUNK)
    done = put(stub, "done", payload(10, 6))
    node.restart()
    stub = node.stub()
    got = get_session(stub, s.upload_id)
    assert got.state == ACTIVE and got.uploaded_offset == 2 * CHUNK
    assert get_session(stub, done.session.upload_id).state == COMMITTED
    resp = resume(stub, s.upload_id, data)
    assert resp.session.state == COMMITTED
    check_object(stub, "obj", data)


def _workers(node) -> list[psutil.Process]:
    """The node's processes that listen on its gRPC port (its workers)."""
    out = []
    root = psutil.Process(node.proc.pid)
    for p in [root] + root.children(recursive=True):
        try:
            conns = p.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == node.port for c in conns):
            out.append(p)
    return out


def test_active_session_survives_a_worker_crash(node_factory):
    node = node_factory(workers=2)
    stub = node.stub()
    workers = _workers(node)
    assert len(workers) == 2, workers
    data = payload(MiB, 7)
    s = create(stub, "obj", data, chunk_size=CHUNK)
    upload_data(stub, s.upload_id, data, CHUNK, end=8 * CHUNK)
    with hold(stub, msg(8 * CHUNK, data[8 * CHUNK:9 * CHUNK], s.upload_id),
              timeout=60) as (feed, call, _):
        for w in workers:
            w.send_signal(signal.SIGKILL)
        exc = call.exception(timeout=10)
        assert exc is not None
    assert node.proc.poll() is None, "the node itself must survive a worker crash"

    def answers():
        try:
            with grpc.insecure_channel(node.addr) as ch:
                return node_info(oss_pb2_grpc.ObjectStorageStub(ch))
        except grpc.RpcError:
            return None
    wait_until(answers, 30, interval=0.2, what="workers restarted")
    stub = node.stub()
    got = get_session(stub, s.upload_id)
    assert got.state == ACTIVE and 8 * CHUNK <= got.uploaded_offset <= 9 * CHUNK
    resp = resume(stub, s.upload_id, data)
    assert resp.session.state == COMMITTED
    check_object(stub, "obj", data)


def test_sigterm_drains_checkpoints_and_exits_0(node_factory):
    node = node_factory(workers=1, grace=1)
    stub = node.stub()
    data = payload(4 * CHUNK, 8)
    s = create(stub, "obj", data)
    with node.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == \
            health_pb2.HealthCheckResponse.SERVING
        with hold(stub, msg(0, data[:CHUNK], s.upload_id), timeout=60) as (feed, call, _):
            feed.send(msg(CHUNK, data[CHUNK:2 * CHUNK]))
            time.sleep(0.2)
            t0 = time.monotonic()
            node.proc.send_signal(signal.SIGTERM)

            def not_serving():
                try:
                    st = health.Check(health_pb2.HealthCheckRequest(service="oss.v1.ObjectStorage"),
                                      timeout=2).status
                    return st == health_pb2.HealthCheckResponse.NOT_SERVING
                except grpc.RpcError as exc:
                    return exc.code() == grpc.StatusCode.UNAVAILABLE
            wait_until(not_serving, 5, interval=0.02, what="health not SERVING while draining")
            # New calls are refused: UNAVAILABLE, reason DRAINING when the service answers
            # (a call refused by gRPC itself carries no ErrorInfo, which API.md allows).
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
            reasons = info_reasons(refused.value)
            assert reasons in ([], ["DRAINING"]), reasons
            exc = call.exception(timeout=15)
        assert exc is not None, "the running stream was not ended after the grace"
        assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED), exc
    assert node.proc.wait(20) == 0
    assert time.monotonic() - t0 < 15
    node.start()
    stub = node.stub()
    got = get_session(stub, s.upload_id)
    assert got.state == ACTIVE and got.uploaded_offset == 2 * CHUNK
    resp = resume(stub, s.upload_id, data)
    assert resp.session.state == COMMITTED
    check_object(stub, "obj", data)


def test_a_stream_finishing_within_the_grace_commits(node_factory):
    node = node_factory(workers=1, grace=5)
    stub = node.stub()
    data = payload(4 * CHUNK, 9)
    s = create(stub, "obj", data)
    with hold(stub, msg(0, data[:CHUNK], s.upload_id), timeout=30) as (feed, call, _):
        node.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)   # draining now; the running stream keeps its grace
        for off, piece in split(data, CHUNK, CHUNK):
            feed.send(msg(off, piece))
        feed.close()
        resp = call.result(timeout=10)
    assert resp.session.state == COMMITTED and resp.object.sha256 == sha256_hex(data)
    assert node.proc.wait(20) == 0
    node.start()
    check_object(node.stub(), "obj", data)
