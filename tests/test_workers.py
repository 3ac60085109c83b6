"""The multiprocess node: N workers behind one port, restarts, drain, shared metrics.

Every test starts a real `mini-oss serve --workers 2` and talks to it through separate TCP
connections (channels with their own subchannel pool), so calls land on different workers.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib

import grpc
import psutil
import pytest
from contract import held_stream, wait_until

from node.pb import oss_pb2 as pb
from node.pb import oss_pb2_grpc
from node.status import from_rpc_error

CHUNK = 64 * 1024


def own_channel(addr: str) -> grpc.Channel:
    """A channel with its own TCP connection (gRPC shares one per target by default)."""
    return grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])


def channel_on_worker(addr: str, worker_id: int, tries: int = 64):
    """A connection that the kernel handed to `worker_id`, and its stub."""
    for _ in range(tries):
        channel = own_channel(addr)
        stub = oss_pb2_grpc.ObjectStorageStub(channel)
        if stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=10).worker_id == worker_id:
            return channel, stub
        channel.close()
    raise AssertionError(f"no connection landed on worker {worker_id} in {tries} tries")


def chunk(upload_id: str, offset: int, data: bytes) -> pb.UploadChunk:
    return pb.UploadChunk(upload_id=upload_id, offset=offset, data=data, crc32=zlib.crc32(data))


def durable_offset(stub, upload_id: str) -> int:
    return stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=upload_id)).uploaded_offset


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


@pytest.fixture
def node2(node_factory):
    return node_factory(workers=2)


def test_connections_land_on_every_worker(node2):
    """16 connections over 2 workers: both serve (all on one is a 1-in-30000 event, so a
    miss is followed by up to 48 more connections before the test fails)."""
    seen: dict[int, int] = {}
    channels = []
    try:
        while len(channels) < 16 or (set(seen) != {0, 1} and len(channels) < 64):
            channels.append(own_channel(node2.addr))
            info = oss_pb2_grpc.ObjectStorageStub(channels[-1]).GetNodeInfo(pb.GetNodeInfoRequest())
            assert info.workers == 2
            seen[info.worker_id] = seen.get(info.worker_id, 0) + 1
    finally:
        for channel in channels:
            channel.close()
    assert set(seen) == {0, 1}, seen


def test_session_busy_across_workers(node2):
    ch0, stub0 = channel_on_worker(node2.addr, 0)
    ch1, stub1 = channel_on_worker(node2.addr, 1)
    data = os.urandom(4 * CHUNK)
    s = stub0.CreateUploadSession(pb.CreateUploadSessionRequest(
        object_id="busy", file_name="b.bin", file_size=len(data)))
    # held_stream retries when the probe itself held the session as the stream arrived (the
    # stream is then refused as busy): polling with a probe alone can wait forever.
    call, feed = held_stream(stub0, s.upload_id, data[:CHUNK], probe=stub1)
    with pytest.raises(grpc.RpcError) as caught:
        stub1.Upload(iter([chunk(s.upload_id, 0, data[:CHUNK])]), timeout=10)
    err = from_rpc_error(caught.value)
    assert (err.code, err.reason) == ("ABORTED", "SESSION_BUSY")
    for offset in range(CHUNK, len(data), CHUNK):
        feed.put(pb.UploadChunk(offset=offset, data=data[offset:offset + CHUNK],
                                crc32=zlib.crc32(data[offset:offset + CHUNK])))
    feed.put(None)
    response = call.result(timeout=30)
    assert response.object.sha256 == hashlib.sha256(data).hexdigest()
    ch0.close()
    ch1.close()


def test_resume_on_another_worker(node2):
    ch0, stub0 = channel_on_worker(node2.addr, 0)
    ch1, stub1 = channel_on_worker(node2.addr, 1)
    data = os.urandom(6 * CHUNK + 123)
    s = stub0.CreateUploadSession(pb.CreateUploadSessionRequest(
        object_id="moved", file_name="m.bin", file_size=len(data)))
    first = stub0.Upload(iter([chunk(s.upload_id, o, data[o:o + CHUNK]) for o in range(0, 3 * CHUNK, CHUNK)]))
    assert first.session.uploaded_offset == 3 * CHUNK
    rest = stub1.Upload(iter([chunk(s.upload_id, o, data[o:o + CHUNK])
                              for o in range(3 * CHUNK, len(data), CHUNK)]))
    assert rest.session.state == pb.UploadSession.COMMITTED
    assert rest.object.sha256 == hashlib.sha256(data).hexdigest()
    got = b"".join(c.data for c in stub0.Download(pb.DownloadRequest(object_id="moved")))
    assert got == data
    ch0.close()
    ch1.close()


def test_kill_9_of_the_worker_holding_a_stream(node2):
    ch0, stub0 = channel_on_worker(node2.addr, 0)
    data = os.urandom(8 * CHUNK)
    s = stub0.CreateUploadSession(pb.CreateUploadSessionRequest(
        object_id="victim", file_name="v.bin", file_size=len(data)))
    ch1, stub1 = channel_on_worker(node2.addr, 1)
    call, feed = held_stream(stub0, s.upload_id, data[:CHUNK], probe=stub1)
    for offset in range(CHUNK, 3 * CHUNK, CHUNK):
        feed.put(chunk("", offset, data[offset:offset + CHUNK]))
    old_pid = node2.worker_pids()[0]
    os.kill(old_pid, signal.SIGKILL)
    with pytest.raises(grpc.RpcError):
        call.result(timeout=20)
    feed.put(None)
    # The worker is replaced...
    wait_until(lambda: node2.worker_pids().get(0, old_pid) != old_pid, 20, what="worker 0 to be restarted")
    # ...and no stale claim is left: another worker resumes from the durable offset at once.
    offset = durable_offset(stub1, s.upload_id)
    assert 0 <= offset <= 3 * CHUNK
    response = stub1.Upload(iter([chunk(s.upload_id, o, data[o:o + CHUNK])
                                  for o in range(offset, len(data), CHUNK)] or
                                 [chunk(s.upload_id, offset, b"")]))
    assert response.session.state == pb.UploadSession.COMMITTED
    assert response.object.sha256 == hashlib.sha256(data).hexdigest()
    new_ch, new_stub = channel_on_worker(node2.addr, 0)  # the new worker 0 serves too
    assert b"".join(c.data for c in new_stub.Download(pb.DownloadRequest(object_id="victim"))) == data
    for channel in (ch0, ch1, new_ch):
        channel.close()


def test_sigterm_during_uploads_drains_and_sessions_resume(node_factory):
    node = node_factory(workers=2, grace=2)
    probe = oss_pb2_grpc.ObjectStorageStub(own_channel(node.addr))
    uploads = []
    for i in range(6):
        channel = own_channel(node.addr)
        stub = oss_pb2_grpc.ObjectStorageStub(channel)
        data = os.urandom(4 * CHUNK)
        s = stub.CreateUploadSession(pb.CreateUploadSessionRequest(
            object_id=f"drain-{i}", file_name="d.bin", file_size=len(data)))
        # Two chunks' worth in the first message: whatever the stream has taken when the
        # drain begins, the grace lets it finish verifying what it was sent.
        call, feed = held_stream(stub, s.upload_id, data[:2 * CHUNK], probe=probe)
        uploads.append((channel, stub, s, data, (call, feed)))
    started = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(30) == 0
    assert time.monotonic() - started < 2 + 10, "drain took longer than the grace and its margin"
    for channel, _, _, _, (call, feed) in uploads:
        with pytest.raises(grpc.RpcError):
            call.result(timeout=10)
        feed.put(None)
        channel.close()
    node.start()
    stub = node.stub()
    for _, _, s, data, _ in uploads:
        session = stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=s.upload_id))
        assert session.state == pb.UploadSession.ACTIVE
        assert session.uploaded_offset == 2 * CHUNK  # what each stream verified was checkpointed
        offset = session.uploaded_offset
        response = stub.Upload(iter([chunk(s.upload_id, o, data[o:o + CHUNK])
                                     for o in range(offset, len(data), CHUNK)]))
        assert response.object.sha256 == hashlib.sha256(data).hexdigest()


def test_metrics_totals_survive_a_worker_restart(node_factory):
    node = node_factory(workers=2, metrics_listen="127.0.0.1:0")
    moved_in = moved_out = 0

    def round_trip(stub, name: str, size: int) -> None:
        nonlocal moved_in, moved_out
        data = os.urandom(size)
        s = stub.CreateUploadSession(pb.CreateUploadSessionRequest(
            object_id=name, file_name="x", file_size=size))
        stub.Upload(iter([chunk(s.upload_id, o, data[o:o + CHUNK]) for o in range(0, size, CHUNK)]))
        got = b"".join(c.data for c in stub.Download(pb.DownloadRequest(object_id=name)))
        assert got == data
        moved_in += size
        moved_out += size

    ch0, stub0 = channel_on_worker(node.addr, 0)
    ch1, stub1 = channel_on_worker(node.addr, 1)
    round_trip(stub0, "m0", 5 * CHUNK + 7)
    round_trip(stub1, "m1", 3 * CHUNK)
    before = scrape(node.metrics_url)
    assert before["mini_oss_received_bytes_total"] == moved_in
    assert before["mini_oss_sent_bytes_total"] == moved_out
    assert before['mini_oss_sessions_total{event="committed"}'] == 2
    assert before["mini_oss_objects_committed_total"] == 2

    old_pid = node.worker_pids()[0]
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: node.worker_pids().get(0, old_pid) != old_pid, 20, what="worker 0 to be restarted")
    ch0.close()
    ch0, stub0 = channel_on_worker(node.addr, 0)
    round_trip(stub0, "m2", 2 * CHUNK)
    with pytest.raises(grpc.RpcError):
        stub1.StatObject(pb.StatObjectRequest(object_id="missing"))
    after = scrape(node.metrics_url)
    assert after["mini_oss_received_bytes_total"] == moved_in
    assert after["mini_oss_sent_bytes_total"] == moved_out
    assert after["mini_oss_objects_committed_total"] == 3
    assert after['mini_oss_errors_total{code="NOT_FOUND"}'] >= 1
    assert after["mini_oss_active_streams"] == 0
    assert after["mini_oss_commit_seconds_count"] == 3
    for worker in ("0", "1"):
        assert after[f'mini_oss_worker_rss_bytes{{worker="{worker}"}}'] > 0
        assert after[f'mini_oss_worker_open_fds{{worker="{worker}"}}'] > 0
        assert f'mini_oss_worker_cpu_seconds_total{{worker="{worker}"}}' in after
    ch0.close()
    ch1.close()


def test_a_supervisor_killed_with_sigkill_leaves_no_metrics_file_behind(node_factory):
    """The shared counters live in an anonymous memory file: a kill -9 of the whole node
    (no clean-up runs) leaves nothing in /dev/shm or the temp dir, and the counters work."""
    places = [p for p in ("/dev/shm", tempfile.gettempdir()) if os.path.isdir(p)]
    before = {p: set(os.listdir(p)) for p in places}
    node = node_factory(workers=1, metrics_listen="127.0.0.1:0")
    stub = node.stub()
    s = stub.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="m", file_name="x", file_size=5))
    stub.Upload(iter([chunk(s.upload_id, 0, b"hello")]))
    assert scrape(node.metrics_url)["mini_oss_received_bytes_total"] == 5
    node.kill()
    left = [name for p in places for name in set(os.listdir(p)) - before[p] if "mini-oss-metrics" in name]
    assert left == []


def test_a_worker_that_cannot_boot_stops_serve_with_the_reason(tmp_path):
    env = dict(os.environ, MINI_OSS_FAILPOINTS="worker_boot=error")
    proc = subprocess.run(
        [sys.executable, "-m", "node", "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir",
         str(tmp_path / "data"), "--metrics-listen", "", "--workers", "2"],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "started at" not in proc.stdout
    assert "workers cannot boot: FailpointError: failpoint worker_boot" in proc.stderr


def test_supervisor_process_imports_no_grpc():
    code = "import sys, node.workers.supervisor, node.cli; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_workers_are_children_of_one_supervisor(node2):
    supervisor = psutil.Process(node2.proc.pid)
    children = {p.pid for p in supervisor.children()}
    assert set(node2.worker_pids().values()) <= children
    assert len(node2.worker_pids()) == 2


def test_catalog_holds_100_concurrent_creates_and_commits_from_all_workers(node2):
    """100 uploads at once over 16 connections (both workers): every create and commit lands,
    no client ever sees "database is locked" (or any error), and the catalog lists all 100."""
    import concurrent.futures

    channels = [own_channel(node2.addr) for _ in range(16)]
    stubs = [oss_pb2_grpc.ObjectStorageStub(c) for c in channels]
    landed: dict[int, int] = {}
    for stub in stubs:
        worker = stub.GetNodeInfo(pb.GetNodeInfoRequest()).worker_id
        landed[worker] = landed.get(worker, 0) + 1

    def upload(i: int) -> str:
        stub = stubs[i % len(stubs)]
        data = os.urandom(1000 + i)
        s = stub.CreateUploadSession(pb.CreateUploadSessionRequest(
            object_id=f"many-{i:03d}", file_name="m.bin", file_size=len(data)), timeout=60)
        response = stub.Upload(iter([chunk(s.upload_id, 0, data)]), timeout=60)
        assert response.object.sha256 == hashlib.sha256(data).hexdigest()
        return response.object.object_id

    try:
        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            committed = sorted(pool.map(upload, range(100)))
        listed = stubs[0].ListObjects(pb.ListObjectsRequest(prefix="many-", page_size=1000))
        assert committed == [o.object_id for o in listed.objects] == [f"many-{i:03d}" for i in range(100)]
        assert "database is locked" not in node2.log_text()
    finally:
        for channel in channels:
            channel.close()


def test_worker_cpu_counter_never_goes_down_across_a_restart(node_factory):
    """mini_oss_worker_cpu_seconds_total is a counter: after kill -9 of a worker that burned
    CPU, its replacement starts from what the slot already counted, not from zero."""
    node = node_factory(workers=2, metrics_listen="127.0.0.1:0")
    key = 'mini_oss_worker_cpu_seconds_total{worker="0"}'
    ch0, stub0 = channel_on_worker(node.addr, 0)
    data = os.urandom(4 * 1024 * 1024)
    deadline = time.monotonic() + 120
    round_trips = 0
    # Burn CPU in worker 0 until its counter is well above what a fresh worker uses to boot
    # (about 0.3 s here).
    while scrape(node.metrics_url)[key] < 1.5:
        assert time.monotonic() < deadline, "worker 0 did not reach 1.5 s of CPU"
        s = stub0.CreateUploadSession(pb.CreateUploadSessionRequest(
            object_id="burn", file_name="burn.bin", file_size=len(data)))
        stub0.Upload(iter([chunk(s.upload_id, o, data[o:o + CHUNK])
                           for o in range(0, len(data), CHUNK)]))
        assert sum(len(c.data) for c in stub0.Download(pb.DownloadRequest(object_id="burn"))) == len(data)
        round_trips += 1
    ch0.close()
    time.sleep(1.5)  # at least one more heartbeat: the last uploads are counted
    before = scrape(node.metrics_url)
    other_before = before['mini_oss_worker_cpu_seconds_total{worker="1"}']

    old_pid = node.worker_pids()[0]
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: node.worker_pids().get(0, old_pid) != old_pid, 30,
               what="worker 0 to be restarted and serving")
    seen = [before[key]]
    for _ in range(3):
        after = scrape(node.metrics_url)
        seen.append(after[key])
        assert after['mini_oss_worker_cpu_seconds_total{worker="1"}'] >= other_before
        time.sleep(1.1)
    assert seen == sorted(seen), f"worker 0's CPU counter went down: {seen}"
    ch0, stub0 = channel_on_worker(node.addr, 0)  # the new worker 0 serves and keeps counting
    stub0.GetNodeInfo(pb.GetNodeInfoRequest())
    ch0.close()
    wait_until(lambda: scrape(node.metrics_url)[key] > seen[-1], 10,
               what="the new worker 0 to add its own CPU")
