"""Faults, on purpose: crashes at every interesting point, torn tails, a full disk, a client
that vanishes, and limits. Each test checks that every promise of API.md still holds: objects
are whole and verified, sessions resume, nothing is left behind.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import zlib

import grpc
import pytest
from contract import wait_until

from node.client import Client
from node.errors import DiskFull
from node.pb import oss_pb2 as pb
from node.status import from_rpc_error

MiB = 1024 * 1024


def write_file(path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def chunk(upload_id: str, offset: int, data: bytes) -> pb.UploadChunk:
    return pb.UploadChunk(upload_id=upload_id, offset=offset, data=data, crc32=zlib.crc32(data))


def files(directory) -> list[str]:
    return sorted(os.listdir(directory))


# Each point fires on a hit that falls inside the second upload (an overwrite of v1, 3 MiB in
# 1 MiB chunks, checkpointed every 2 MiB): v2's third chunk, v2's first checkpoint, v2's
# commit after the rename, v2's commit after the index swap.
CRASH_AT = {"chunk_written": 6, "checkpoint_synced": 2, "commit_renamed": 2, "commit_published": 2}


@pytest.mark.parametrize("point", sorted(CRASH_AT))
def test_crash_at_each_point_then_the_overwrite_completes_by_resume(node_factory, tmp_path, point):
    once = tmp_path / "once"
    once.mkdir()
    env = {"MINI_OSS_FAILPOINTS": f"{point}=crash-after:{CRASH_AT[point]}",
           "MINI_OSS_FAILPOINTS_ONCE": str(once), "MINI_OSS_CHECKPOINT_BYTES": str(2 * MiB)}
    node = node_factory(workers=1, env=env)
    v1, v2 = tmp_path / "v1.bin", tmp_path / "v2.bin"
    write_file(v1, 3 * MiB)
    digest = write_file(v2, 6 * MiB + 5)
    with Client(node.addr) as client:
        client.upload(v1, "crashy")
        assert os.listdir(once) == [], "the failpoint fired during v1"
        info = client.upload(v2, "crashy")  # the worker dies mid-way; the client resumes
        assert os.listdir(once) == [point], "the failpoint did not fire: the test proved nothing"
        assert info.sha256 == digest
        got = tmp_path / "got.bin"
        client.download("crashy", got)
        assert hashlib.sha256(got.read_bytes()).hexdigest() == digest
    # The worker was replaced, v1's bytes were freed, and nothing was left behind.
    assert len(node.worker_pids()) == 1
    (only,) = files(node.data_dir / "objects")
    assert only.startswith("crashy_v2_")
    assert os.readlink(node.data_dir / "index" / "crashy") == f"../objects/{only}"
    assert files(node.data_dir / "parts") == []


def test_torn_tail_is_cut_back_and_rehashed_after_a_restart(node_factory, tmp_path):
    node = node_factory(workers=1)
    data = os.urandom(5 * MiB)
    stub = node.stub()
    s = stub.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="torn", file_name="t.bin",
                                                               file_size=len(data)))
    first = stub.Upload(iter([chunk(s.upload_id, o, data[o:o + MiB]) for o in (0, MiB)]))
    assert first.session.uploaded_offset == 2 * MiB
    node.stop()
    (part,) = (node.data_dir / "parts").iterdir()
    with open(part, "ab") as fh:  # bytes the checkpoint never vouched for: garbage past it
        fh.write(os.urandom(777_777))
    node.start()
    assert part.stat().st_size == 2 * MiB, "recovery did not cut the part back to its checkpoint"
    stub = node.stub()
    resumed = stub.Upload(iter([chunk(s.upload_id, o, data[o:o + MiB]) for o in range(2 * MiB, len(data), MiB)]))
    assert resumed.object.sha256 == hashlib.sha256(data).hexdigest()


def test_torn_tail_is_cut_back_on_claim_while_the_node_runs(node, stub):
    data = os.urandom(3 * MiB)
    s = stub.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="torn2", file_name="t",
                                                               file_size=len(data)))
    stub.Upload(iter([chunk(s.upload_id, 0, data[:MiB])]))
    (part,) = (node.data_dir / "parts").iterdir()
    with open(part, "r+b") as fh:  # a worker died after pwrite, before its checkpoint
        fh.seek(MiB)
        fh.write(b"\x00garbage" * 1000)
    resumed = stub.Upload(iter([chunk(s.upload_id, o, data[o:o + MiB]) for o in (MiB, 2 * MiB)]))
    assert resumed.object.sha256 == hashlib.sha256(data).hexdigest()


@pytest.fixture
def small_fs(tmp_path):
    """A 40 MiB tmpfs: a disk that really fills up (mounting needs root, which CI has)."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_keeps_the_node_serving_and_the_session_resumes_when_space_is_freed(
        node_factory, small_fs, tmp_path):
    node = node_factory(data_dir=small_fs / "data", workers=1, env={"MINI_OSS_DISK_RESERVE": str(MiB)})
    filler = tmp_path / "filler.bin"
    write_file(filler, 20 * MiB)
    big = os.urandom(30 * MiB)
    with Client(node.addr) as client:
        client.upload(filler, "filler")
        stub = node.stub()
        s = stub.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="big", file_name="b",
                                                                   file_size=len(big)))
        with pytest.raises(grpc.RpcError) as caught:
            stub.Upload(iter([chunk(s.upload_id, o, big[o:o + MiB]) for o in range(0, len(big), MiB)]))
        err = from_rpc_error(caught.value)
        assert (err.code, err.reason) == ("RESOURCE_EXHAUSTED", "DISK_FULL")
        durable = int(err.metadata["uploaded_offset"])
        assert 0 < durable < len(big)
        session = stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=s.upload_id))
        assert session.state == pb.UploadSession.ACTIVE and session.uploaded_offset == durable
        # Still serving: reads work, and new sessions are refused while under the reserve.
        assert client.stat("filler").size == 20 * MiB
        with pytest.raises(DiskFull):
            client.create_session("another", "x", 10)
        # Free space, then the same session resumes from its durable offset and commits whole.
        client.delete("filler")
        resumed = stub.Upload(iter([chunk(s.upload_id, o, big[o:o + MiB])
                                    for o in range(durable, len(big), MiB)]))
        assert resumed.object.sha256 == hashlib.sha256(big).hexdigest()
        got = tmp_path / "big.out"
        client.download("big", got)
        assert got.read_bytes() == big


@pytest.fixture
def few_inodes(tmp_path):
    """A loop-mounted 16 MiB ext4 with 64 inodes: space for bytes, but new files really fail
    with ENOSPC once the inodes are gone (mounting needs root, which CI has)."""
    image, mount_point = tmp_path / "fs.img", tmp_path / "fs"
    mount_point.mkdir()
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-N", "64", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_commit_that_cannot_make_its_index_entry_is_disk_full_and_commits_later(node_factory, few_inodes):
    """The commit's index entry needs an inode (rename into objects/ may need a directory block):
    ENOSPC there is DISK_FULL like every other write, never INTERNAL, and the session commits
    once there is room again."""
    node = node_factory(data_dir=few_inodes / "data", workers=1, env={"MINI_OSS_DISK_RESERVE": "0"})
    stub = node.stub()
    data = os.urandom(64 * 1024)
    s = stub.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="late", file_name="l",
                                                               file_size=len(data)))
    fillers = few_inodes / "fillers"
    fillers.mkdir()
    taken = 0
    while True:  # take every inode left
        try:
            (fillers / str(taken)).touch()
        except OSError:
            break
        taken += 1
    with pytest.raises(grpc.RpcError) as caught:
        stub.Upload(iter([chunk(s.upload_id, 0, data)]))
    err = from_rpc_error(caught.value)
    assert (err.code, err.reason) == ("RESOURCE_EXHAUSTED", "DISK_FULL"), err
    assert stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=s.upload_id)).state == \
        pb.UploadSession.ACTIVE
    for name in os.listdir(fillers):
        os.unlink(fillers / name)
    done = stub.Upload(iter([chunk(s.upload_id, 0, data)]))  # bytes already there are ignored
    assert done.object.sha256 == hashlib.sha256(data).hexdigest()
    assert b"".join(c.data for c in stub.Download(pb.DownloadRequest(object_id="late"))) == data


# The test's probe holds the session for a moment too, so a stream of ours that meets it is
# refused as busy: start another until one holds the session (then it never ends on its own).
VANISHING_CLIENT = textwrap.dedent("""
    import sys, time, zlib, queue, grpc
    from node.pb import oss_pb2 as pb, oss_pb2_grpc
    addr, upload_id = sys.argv[1], sys.argv[2]
    stub = oss_pb2_grpc.ObjectStorageStub(grpc.insecure_channel(addr))
    data = b"x" * 65536
    print("sent", flush=True)
    while True:
        q = queue.Queue()
        q.put(pb.UploadChunk(upload_id=upload_id, offset=0, data=data, crc32=zlib.crc32(data)))
        try:
            stub.Upload.future(iter(q.get, None)).result()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ABORTED:
                raise
            time.sleep(0.05)
""")


def test_a_client_that_vanishes_mid_stream_frees_its_session(node_factory):
    node = node_factory(workers=1, stream_idle_timeout=1)
    stub = node.stub()
    s = stub.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="ghost", file_name="g",
                                                               file_size=65536 * 3))
    proc = subprocess.Popen([sys.executable, "-c", VANISHING_CLIENT, node.addr, s.upload_id],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "sent"

        def held() -> bool:  # an empty chunk at offset 0 changes nothing unless refused as busy
            try:
                stub.Upload(iter([pb.UploadChunk(upload_id=s.upload_id, offset=0, data=b"")]))
            except grpc.RpcError as exc:
                return from_rpc_error(exc).reason == "SESSION_BUSY"
            return False
        # The client's stream holds the session; then it freezes without closing anything:
        # no FIN, no RST, no more data.
        wait_until(held, 10, interval=0.01, what="the client's stream to hold the session")
        proc.send_signal(signal.SIGSTOP)
        data = b"x" * 65536
        busy_seen = 0

        def resumed():
            nonlocal busy_seen
            try:
                offset = stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=s.upload_id)).uploaded_offset
                return stub.Upload(iter([chunk(s.upload_id, o, data) for o in range(offset, 3 * 65536, 65536)]))
            except grpc.RpcError as exc:
                assert from_rpc_error(exc).reason == "SESSION_BUSY"
                busy_seen += 1
                return None
        response = wait_until(resumed, 15, what="the idle timeout to free the session")
        assert busy_seen >= 1, "the frozen stream never held the session: nothing was freed"
        assert response.object.sha256 == hashlib.sha256(data * 3).hexdigest()
    finally:
        proc.kill()
        proc.wait()


def test_session_limits_node_wide_and_per_client(node_factory):
    node = node_factory(workers=1, env={"MINI_OSS_MAX_SESSIONS": "5", "MINI_OSS_MAX_SESSIONS_PER_CLIENT": "3"})
    with Client(node.addr) as client:
        info = client.node_info()
        assert (info.max_sessions, info.max_sessions_per_client) == (5, 3)
        made = [client.create_session(f"s{i}", "f", 1) for i in range(3)]
        stub = node.stub()
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="s3", file_name="f", file_size=1))
        err = from_rpc_error(caught.value)
        assert (err.code, err.reason) == ("RESOURCE_EXHAUSTED", "TOO_MANY_SESSIONS")
        assert err.retry_delay and err.retry_delay > 0, "TOO_MANY_SESSIONS must carry RetryInfo"
        client.abort_session(made[0].upload_id)  # a place frees up
        assert client.create_session("s3", "f", 1).object_id == "s3"


def test_abandoned_sessions_are_expired_once_and_their_bytes_freed(node_factory):
    # A TTL of 5 s leaves room for creating the 300 sessions on a busy machine before the first
    # one may expire; the one that holds bytes gets them right after it is made.
    node = node_factory(workers=2, session_ttl=5, metrics_listen="127.0.0.1:0")
    stub = node.stub()
    ids = []
    for i in range(300):
        s = stub.CreateUploadSession(pb.CreateUploadSessionRequest(object_id=f"a{i:04d}", file_name="f",
                                                                   file_size=100))
        ids.append(s.upload_id)
        if i == 0:
            stub.Upload(iter([chunk(ids[0], 0, b"y" * 50)]))
    assert len(files(node.data_dir / "parts")) == 300
    # An ended session is remembered for one TTL (5 s) after it ends, so its ABORTED state is
    # looked for as soon as it can show, not after the wait for all 300 (on a loaded machine
    # that wait outlasted the memory of the first one).
    def first_ended():
        state = stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=ids[0])).state
        return None if state == pb.UploadSession.ACTIVE else state

    assert wait_until(first_ended, 30, what="the first session to expire") == pb.UploadSession.ABORTED
    wait_until(lambda: not files(node.data_dir / "parts"), 30, what="the sweep to free every part")
    listed = stub.ListUploadSessions(pb.ListUploadSessionsRequest(page_size=1000))
    assert list(listed.sessions) == []
    import urllib.request
    text = urllib.request.urlopen(node.metrics_url, timeout=10).read().decode()
    expired = [line for line in text.splitlines() if line.startswith('mini_oss_sessions_total{event="expired"}')]
    assert expired and float(expired[0].split()[-1]) == 300, expired  # once, not once per worker


@pytest.mark.slow
def test_ten_thousand_sessions_opened_and_abandoned(node_factory):
    """10,000 sessions from 8 threads over 2 workers, each abandoned: every one is expired by
    the sweep (once), its part file freed, and the node keeps serving throughout."""
    import concurrent.futures
    import urllib.request

    node = node_factory(workers=2, session_ttl=5, metrics_listen="127.0.0.1:0")

    def open_many(start: int) -> int:
        with Client(node.addr, channels=2) as client:
            for i in range(start, start + 1250):
                client.create_session(f"abandoned-{i:05d}", "f.bin", 1 << 20)
        return 1250

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(open_many, range(0, 10_000, 1250))) == 10_000
    with Client(node.addr) as client:
        assert client.node_info().workers == 2  # still serving
    wait_until(lambda: not files(node.data_dir / "parts"), 120, what="every abandoned part to be freed")
    with Client(node.addr) as client:
        assert list(client.list_sessions()) == []

    def expired_total() -> float:
        text = urllib.request.urlopen(node.metrics_url, timeout=10).read().decode()
        line = next(l for l in text.splitlines() if l.startswith('mini_oss_sessions_total{event="expired"}'))
        return float(line.split()[-1])
    wait_until(lambda: expired_total() == 10_000, 30, what="the expiry count to reach 10,000")
