"""Trust first: the data-loss findings of the adversarial review, each as a regression test.

A data directory owned by one node (finding 2); a missing, empty, damaged or foreign catalog
refused instead of taken as "every object is an orphan", and unknown files quarantined, not
unlinked (3); the `if_absent` commit race that leaked parts and lowered `uploaded_offset` (9);
a restart right after kill -9 of the supervisor (10); what a worker crash leaves, collected
while the node runs (11); a live session's expiry as GetUploadSession shows it (12).
Real nodes on loopback, real crashes (kill -9, failpoints), no mocks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib

import grpc
import psutil
import pytest
from contract import held_stream, wait_until

from node.client import NO_RETRY, Client
from node.errors import ObjectNotFound
from node.pb import oss_pb2 as pb
from node.status import from_rpc_error

KiB = 1024


def chunk(upload_id: str, offset: int, data: bytes) -> pb.UploadChunk:
    return pb.UploadChunk(upload_id=upload_id, offset=offset, data=data, crc32=zlib.crc32(data))


def serve(data_dir, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`mini-oss serve` on `data_dir`, expected to refuse: its exit status and output."""
    return subprocess.run([sys.executable, "-m", "node", "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                           "--data-dir", str(data_dir), "--metrics-listen", "", *extra],
                          capture_output=True, text=True, timeout=timeout)


def put(client: Client, object_id: str, data: bytes) -> pb.ObjectInfo:
    import io
    return client.upload(io.BytesIO(data), object_id, file_name=f"{object_id}.bin")


# -- finding 2: one node per data directory -----------------------------------------------------


def test_a_second_serve_on_a_running_nodes_data_dir_is_refused_at_once(node_factory):
    node = node_factory(workers=2)
    stub = node.stub()
    with Client(node.addr) as client:
        kept = put(client, "kept", b"acknowledged" * 1000)
    # A session with durable bytes and a stream holding it: what the second node's recovery
    # used to take for orphans.
    s = stub.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="inflight", file_name="f",
                                                               file_size=128 * KiB))
    call, q = held_stream(stub, s.upload_id, b"a" * (64 * KiB))
    files_before = sorted(os.listdir(node.data_dir / "objects")) + sorted(os.listdir(node.data_dir / "parts"))

    second = serve(node.data_dir)
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert lines[-1].startswith("mini-oss: error: cannot start: data dir ")
    assert str(node.data_dir) in lines[-1] and f"pid {node.proc.pid}" in lines[-1], lines[-1]
    assert "Traceback" not in second.stderr
    after = sorted(os.listdir(node.data_dir / "objects")) + sorted(os.listdir(node.data_dir / "parts"))
    assert after == files_before, "the refused node touched the data directory"

    q.put(chunk(s.upload_id, 64 * KiB, b"b" * (64 * KiB)))
    q.put(None)
    assert call.result(timeout=10).object.sha256 == hashlib.sha256(b"a" * (64 * KiB) + b"b" * (64 * KiB)).hexdigest()
    with Client(node.addr) as client:
        assert client.stat("kept").sha256 == kept.sha256


# -- finding 10: kill -9 of the supervisor, then a restart ------------------------------------


def test_after_kill_9_of_the_supervisor_a_restart_serves_and_the_upload_resumes(node_factory):
    # A grace far longer than the new node waits for a dead node's workers (30 s): orphaned
    # workers that drained with it would keep the data directory, and the restart would fail.
    node = node_factory(workers=2, grace=300)
    stub = node.stub()
    s = stub.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="survivor", file_name="f",
                                                               file_size=192 * KiB))
    first = os.urandom(64 * KiB)
    call, q = held_stream(stub, s.upload_id, first)
    workers = [psutil.Process(pid) for pid in node.worker_pids().values()]
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(10)
    # The orphaned workers end their streams (checkpointing what they verified) and exit.
    gone, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, "workers outlived their supervisor"
    with pytest.raises(grpc.RpcError):
        call.result(timeout=10)

    node.start()  # same data directory, same flags
    with Client(node.addr) as client:
        session = client.get_session(s.upload_id)
        assert session.uploaded_offset == 64 * KiB, "the orphaned worker did not checkpoint"
        rest = os.urandom(128 * KiB)
        done = node.stub().Upload(iter([chunk(s.upload_id, 64 * KiB, rest)]))
        assert done.object.sha256 == hashlib.sha256(first + rest).hexdigest()


# -- finding 3: the catalog is the data directory's own, or the node does not start ---------


@pytest.fixture
def stopped_node_with_objects(node_factory):
    node = node_factory(workers=1)
    with Client(node.addr) as client:
        for i in range(5):
            put(client, f"obj-{i}", os.urandom(10 * KiB))
        put(client, "obj-0", b"second version")  # an overwrite: garbage recorded and freed
    node.stop()
    return node


def catalog_files(data_dir) -> list:
    return [data_dir / n for n in ("catalog.db", "catalog.db-wal", "catalog.db-shm")]


def object_files(data_dir) -> list[str]:
    return sorted(os.listdir(data_dir / "objects"))


@pytest.mark.parametrize("damage", ["missing", "zero bytes", "garbage", "another catalog"])
def test_a_node_refuses_a_catalog_that_is_not_its_data_dirs_own(stopped_node_with_objects, tmp_path, damage):
    node = stopped_node_with_objects
    data_dir = node.data_dir
    before = object_files(data_dir)
    assert len(before) == 5
    for path in catalog_files(data_dir):
        path.unlink(missing_ok=True)
    if damage == "zero bytes":
        (data_dir / "catalog.db").write_bytes(b"")
    elif damage == "garbage":
        (data_dir / "catalog.db").write_bytes(os.urandom(8192))
    elif damage == "another catalog":
        other = tmp_path / "other"
        done = subprocess.run([sys.executable, "-c",
                               "import sys; from node.datadir import check_catalog; check_catalog(sys.argv[1])",
                               str(other)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        shutil.copy(other / "catalog.db", data_dir / "catalog.db")

    refused = serve(data_dir)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("mini-oss: error: cannot start: "), refused.stderr
    assert str(data_dir / "catalog.db") in line
    assert f"mini-oss fsck --data-dir {data_dir} --rebuild-catalog" in line
    expected = {"missing": "is missing", "zero bytes": "is empty", "garbage": "cannot be read",
                "another catalog": "is not the catalog"}[damage]
    assert expected in line
    assert object_files(data_dir) == before, "a refused start touched the objects"
    assert os.listdir(data_dir / "index")


def test_files_the_catalog_does_not_know_are_quarantined_not_deleted(node_factory):
    node = node_factory(workers=1)
    with Client(node.addr) as client:
        put(client, "real", b"real bytes")
    node.stop()
    stray_object = node.data_dir / "objects" / "stray_x_0123456789abcdef01234567.bin"
    stray_object.write_bytes(b"somebody's bytes")
    stray_part = node.data_dir / "parts" / "stray_y.part.0123456789abcdef01234567"
    stray_part.write_bytes(b"half an upload")
    empty_part = node.data_dir / "parts" / "empty_z.part.76543210fedcba9876543210"
    empty_part.write_bytes(b"")
    node.start()
    quarantine = node.data_dir / "quarantine"
    assert (quarantine / "objects" / stray_object.name).read_bytes() == b"somebody's bytes"
    assert (quarantine / "parts" / stray_part.name).read_bytes() == b"half an upload"
    assert not stray_object.exists() and not stray_part.exists()
    assert not empty_part.exists(), "an empty part holds no bytes: removed"
    with Client(node.addr) as client:
        assert client.stat("real").size == len(b"real bytes")


def test_an_object_whose_file_was_lost_is_forgotten_at_start_and_the_rest_serve(node_factory):
    node = node_factory(workers=1)
    with Client(node.addr) as client:
        put(client, "kept", b"kept bytes")
        put(client, "lost", b"lost bytes")
    node.stop()
    entry = node.data_dir / "index" / "lost"
    os.unlink(node.data_dir / "index" / os.readlink(entry))  # someone removed the object's file
    node.start()  # recovery forgets the row inside the transaction that holds the object
    assert not os.path.lexists(entry)
    with Client(node.addr) as client:
        with pytest.raises(ObjectNotFound):
            client.stat("lost")
        assert client.stat("kept").size == len(b"kept bytes")
        put(client, "lost", b"new bytes")  # the id is free again
        assert client.stat("lost").size == len(b"new bytes")


# -- finding 9: the if_absent commit race ------------------------------------------------------


def test_racing_if_absent_commits_and_an_abort_leave_no_part_and_never_lower_an_offset(node_factory):
    node = node_factory(workers=2)
    size = 256 * KiB
    with Client(node.addr, channels=4) as client:
        channels = client._channels
        stubs = [pb_stub(ch) for ch in channels]
        lowered: list[str] = []
        for i in range(40):
            object_id = f"race-{i}"
            sessions = [stubs[k].CreateUploadSession(pb.CreateUploadSessionRequest(
                object_id=object_id, file_name="f", file_size=size, if_absent=True)) for k in range(2)]
            payloads = [os.urandom(size) for _ in range(2)]
            results: list = [None, None, None]

            def upload(k: int) -> None:
                try:
                    results[k] = stubs[k].Upload(iter([chunk(sessions[k].upload_id, o, payloads[k][o:o + 64 * KiB])
                                                       for o in range(0, size, 64 * KiB)]))
                except grpc.RpcError as exc:
                    results[k] = from_rpc_error(exc)

            def abort_and_watch() -> None:
                seen = 0
                for _ in range(20):
                    try:
                        rec = stubs[2].GetUploadSession(pb.GetUploadSessionRequest(upload_id=sessions[1].upload_id))
                        if rec.state == pb.UploadSession.ACTIVE:
                            if rec.uploaded_offset < seen:
                                lowered.append(f"{object_id}: {seen} -> {rec.uploaded_offset}")
                            seen = max(seen, rec.uploaded_offset)
                        stubs[2].AbortUploadSession(pb.AbortUploadSessionRequest(upload_id=sessions[1].upload_id))
                        return
                    except grpc.RpcError as exc:
                        results[2] = from_rpc_error(exc)

            threads = [threading.Thread(target=upload, args=(k,)) for k in range(2)]
            threads.append(threading.Thread(target=abort_and_watch))
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            committed = [r for r in results[:2] if isinstance(r, pb.UploadResponse) and r.HasField("object")]
            assert len(committed) <= 1, f"{object_id}: two if_absent uploads both committed"
            for k in range(2):
                if not isinstance(results[k], pb.UploadResponse):
                    assert results[k].reason in ("OBJECT_EXISTS", "SESSION_BUSY", "SESSION_NOT_FOUND"), results[k]
        assert not lowered, lowered
    parts = os.listdir(node.data_dir / "parts")
    # Sessions that lost a race to SESSION_BUSY are still ACTIVE and keep their parts; every
    # other part must be gone.
    with Client(node.addr) as client:
        active = {names_part(s) for s in client.list_sessions("race-")}
    assert set(parts) <= active, f"parts outlived their sessions: {sorted(set(parts) - active)}"
    assert "lost its part file" not in node.log_text()


def pb_stub(channel):
    from node.pb import oss_pb2_grpc
    return oss_pb2_grpc.ObjectStorageStub(channel)


def names_part(session) -> str:
    from node import names
    return names.part_file_name(session.object_id, session.file_name, session.upload_id)


# -- finding 11: what a worker crash leaves is collected while the node runs ----------------


def test_a_replaced_version_left_by_a_worker_crash_is_freed_by_the_running_node(node_factory, tmp_path):
    once = tmp_path / "once"
    once.mkdir()
    # The second commit (the overwrite) crashes the worker after its transaction, before it
    # frees the replaced version.
    env = {"MINI_OSS_FAILPOINTS": "commit_recorded=crash-after:2", "MINI_OSS_FAILPOINTS_ONCE": str(once),
           "MINI_OSS_SWEEP_INTERVAL": "0.2"}
    node = node_factory(workers=1, env=env)
    with Client(node.addr) as client:
        put(client, "twice", b"version one")
        assert len(object_files(node.data_dir)) == 1
        v2 = put(client, "twice", b"version two")  # the client's retry returns the commit
        assert os.listdir(once) == ["commit_recorded"], "the failpoint did not fire"
        assert client.stat("twice").generation == v2.generation
        wait_until(lambda: len(object_files(node.data_dir)) == 1, 20,
                   what="the sweep to free the replaced version")
        import io
        sink = io.BytesIO()
        client.download("twice", sink)
        assert sink.getvalue() == b"version two"


def test_a_create_cut_short_leaves_a_usable_session_and_no_stray_part(node_factory, tmp_path):
    once = tmp_path / "once"
    once.mkdir()
    env = {"MINI_OSS_FAILPOINTS": "session_recorded=crash", "MINI_OSS_FAILPOINTS_ONCE": str(once)}
    node = node_factory(workers=1, env=env)
    stub = node.stub()
    with pytest.raises(grpc.RpcError):
        stub.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="cut", file_name="f", file_size=3))
    assert os.listdir(once) == ["session_recorded"]
    def listed():
        try:
            with Client(node.addr, retry=NO_RETRY) as client:
                return list(client.list_sessions("cut"))
        except Exception:  # the worker is restarting
            return None
    orphan = wait_until(listed, 30, what="the worker to come back")
    assert os.listdir(node.data_dir / "parts") == [], "no part exists before the first claim"
    done = stub.Upload(iter([chunk(orphan[0].upload_id, 0, b"abc")]))
    assert done.object.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert os.listdir(node.data_dir / "parts") == []


# -- finding 12: a live session's expiry -------------------------------------------------------


def test_get_upload_session_never_shows_a_live_session_as_long_expired(node_factory):
    node = node_factory(workers=1, session_ttl=1, stream_idle_timeout=30,
                        env={"MINI_OSS_SWEEP_INTERVAL": "0.2"})
    stub = node.stub()
    s = stub.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="live", file_name="f",
                                                               file_size=64 * KiB * 10))
    call, q = held_stream(stub, s.upload_id, b"x" * (64 * KiB))
    for i in range(1, 6):  # 3 s: three TTLs pass while the stream lives
        time.sleep(0.6)
        q.put(chunk(s.upload_id, i * 64 * KiB, b"x" * (64 * KiB)))
        rec = stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=s.upload_id))
        now_ms = time.time() * 1000
        assert rec.state == pb.UploadSession.ACTIVE
        assert rec.expires_at_unix_ms >= now_ms - 50, \
            f"a live session shown as expired {now_ms - rec.expires_at_unix_ms:.0f} ms ago"
    q.put(None)
    assert call.result(timeout=10).session.uploaded_offset == 6 * 64 * KiB
    rec = stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=s.upload_id))
    assert rec.state == pb.UploadSession.ACTIVE and rec.expires_at_unix_ms >= time.time() * 1000 - 50


# -- a part cut shorter than its checkpoint: the session ends, its offset never goes down -----


def test_a_part_cut_below_its_checkpoint_ends_the_session_never_rewinds_it(node_factory):
    from contract import part_file
    node = node_factory(workers=1)
    stub = node.stub()
    session = stub.CreateUploadSession(pb.CreateUploadSessionRequest(
        object_id="cut-part", file_name="f", file_size=3 * 4096))
    data = os.urandom(2 * 4096)
    done = stub.Upload(iter([chunk(session.upload_id, 0, data)]))
    assert done.session.uploaded_offset == len(data)  # checkpointed when the stream ended
    part = part_file(node.data_dir, session.upload_id)
    os.truncate(part, 4096)  # a durable byte lost behind the node's back
    with pytest.raises(grpc.RpcError) as caught:
        stub.Upload(iter([chunk(session.upload_id, len(data), os.urandom(4096))]))
    err = from_rpc_error(caught.value)
    assert (err.code, err.reason) == ("NOT_FOUND", "SESSION_NOT_FOUND")
    after = stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=session.upload_id))
    assert after.state == pb.UploadSession.ABORTED and after.uploaded_offset == len(data)
    assert not part.exists()  # its bytes are freed with it
