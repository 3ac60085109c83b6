"""Bounds a hostile or broken client cannot push the node past (issue "Trust first").

* Streams: one client's open Upload/Download streams per worker are capped (TOO_MANY_STREAMS,
  with a RetryInfo), one connection's concurrent calls are capped (HTTP/2 max_concurrent_streams),
  and a Download whose client takes nothing for `download_stall_timeout` ends with IDLE_TIMEOUT
  and gives its file back.
* File descriptors: the worker lifts its soft limit to the hard one; running out answers
  RESOURCE_EXHAUSTED/TOO_MANY_OPEN_FILES with a RetryInfo, never INTERNAL, and the node serves on.
* Requests: a unary-request call whose stream carries no message, or nothing for the idle
  timeout, is answered (INVALID_ARGUMENT / IDLE_TIMEOUT) and leaves nothing behind.
* A rate-limited Upload still names its session's durable offset.

Every test runs real nodes on loopback (settings without a `serve` flag are given through
MINI_OSS_* in the node's environment) and talks gRPC to them; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import collections
import io
import os
import re
import subprocess
import sys
import time
import urllib.request

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2

from conftest import RunningNode, stop_all
from node.catalog import FILE_NAME as CATALOG_FILE
from node.client import NO_RETRY, Client
from node.config import Settings
from node.pb import oss_pb2 as pb
from node.pb import oss_pb2_grpc
from node.status import from_rpc_error

MiB = 1024 * 1024
#: A client that takes (almost) nothing: a tiny receive window and no window growth.
STALLING = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]


def worker(node: RunningNode) -> psutil.Process:
    (pid,) = node.worker_pids().values()
    return psutil.Process(pid)


def fds_but_catalog(proc: psutil.Process) -> int:
    """Open descriptors, not counting the catalog's own files: an I/O thread opens its SQLite
    connection (database, -wal, -shm) on its first use, which under load may come late."""
    catalog = sum(os.path.basename(f.path).startswith(CATALOG_FILE) for f in proc.open_files())
    return proc.num_fds() - catalog


def wait_until(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def error_of(call) -> tuple[str, str, float | None] | None:
    """(code, reason, retry_delay) of a finished streaming call, or None if it succeeded."""
    try:
        for _ in call:
            pass
    except grpc.RpcError as exc:
        err = from_rpc_error(exc)
        return err.code, err.reason, err.retry_delay
    return None


def active_streams(node: RunningNode) -> float:
    """The node's Upload and Download handlers running now (from /metrics)."""
    with urllib.request.urlopen(node.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return float(re.search(r"^mini_oss_active_streams (\S+)$", text, re.M).group(1))


def put(node: RunningNode, object_id: str, data: bytes) -> None:
    with Client(node.addr, retry=NO_RETRY) as c:
        c.upload(io.BytesIO(data), object_id)


def read_all(stub, object_id: str, chunk_size: int = 0) -> bytes:
    return b"".join(m.data for m in stub.Download(
        pb.DownloadRequest(object_id=object_id, chunk_size=chunk_size), timeout=30))


# ------------------------------------------------------------------------------------------
# (5) streams per client, per connection, and stalled downloads


def test_stalled_downloads_are_capped_per_client_then_end_with_idle_timeout(node_factory):
    cap, extra = 8, 6
    node = node_factory(workers=1, metrics_listen="127.0.0.1:0",
                        env={"MINI_OSS_DOWNLOAD_STALL_TIMEOUT": "3",
                             "MINI_OSS_MAX_STREAMS_PER_CLIENT": str(cap)})
    data = os.urandom(6 * MiB)
    put(node, "big", data)
    proc = worker(node)
    with node.channel() as channel:
        stub = oss_pb2_grpc.ObjectStorageStub(channel)
        info = stub.GetNodeInfo(pb.GetNodeInfoRequest())
        assert (info.max_streams_per_client, info.download_stall_timeout_ms,
                info.max_streams_per_connection) == (cap, 3000, 256)
        # Warm up: every I/O thread has its catalog open before the baseline is taken.
        for _ in range(3):
            stats = [stub.StatObject.future(pb.StatObjectRequest(object_id="big")) for _ in range(64)]
            assert all(f.result().size == len(data) for f in stats)
            calls = [stub.Download(pb.DownloadRequest(object_id="big")) for _ in range(cap)]
            assert all(error_of(c) is None for c in calls)
    baseline = fds_but_catalog(proc)

    with grpc.insecure_channel(node.addr, options=STALLING) as stalled:
        stub = oss_pb2_grpc.ObjectStorageStub(stalled)
        calls = [stub.Download(pb.DownloadRequest(object_id="big", chunk_size=2 * MiB), timeout=60)
                 for _ in range(cap + extra)]  # ... and never read
        # Past the cap, calls are refused at once (they finish though nobody reads).
        wait_until(lambda: sum(c.done() for c in calls) >= extra, what="the refusals")
        refused = [c for c in calls if c.done()]
        assert len(refused) == extra
        for call in refused:
            code, reason, delay = error_of(call)
            assert (code, reason) == ("RESOURCE_EXHAUSTED", "TOO_MANY_STREAMS") and delay > 0
        # The stalled streams are ended by the node (none runs any more), their files closed ...
        wait_until(lambda: active_streams(node) == 0, what="the stalled streams to end")
        # (a few descriptors come and go on their own: the sweep's lock, a catalog connection)
        wait_until(lambda: fds_but_catalog(proc) <= baseline + 3,
                   what="the stalled streams' files to close")
        # ... and each ends with IDLE_TIMEOUT (after what was already on its way).
        for call in calls:
            if call not in refused:
                assert error_of(call) == ("ABORTED", "IDLE_TIMEOUT", None)

    with node.channel() as channel:  # every place was given back
        stub = oss_pb2_grpc.ObjectStorageStub(channel)
        calls = [stub.Download(pb.DownloadRequest(object_id="big")) for _ in range(cap)]
        assert all(error_of(c) is None for c in calls)
        assert read_all(stub, "big") == data
    wait_until(lambda: fds_but_catalog(proc) <= baseline + 3, what="every file to close")


def test_uploads_count_toward_the_per_client_cap(node_factory):
    node = node_factory(workers=1, env={"MINI_OSS_MAX_STREAMS_PER_CLIENT": "1"})
    put(node, "obj", os.urandom(8 * MiB))  # more than gRPC takes before the client reads
    with node.channel() as channel:
        stub = oss_pb2_grpc.ObjectStorageStub(channel)
        session = stub.CreateUploadSession(pb.CreateUploadSessionRequest(
            object_id="up", file_name="f", file_size=10))
        with grpc.insecure_channel(node.addr, options=STALLING) as stalled:
            held = oss_pb2_grpc.ObjectStorageStub(stalled).Download(
                pb.DownloadRequest(object_id="obj", chunk_size=2 * MiB), timeout=60)
            held.initial_metadata()  # the node sent headers: it holds the place and the file
            assert _busy(stub)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Upload(iter([pb.UploadChunk(upload_id=session.upload_id, offset=0,
                                                 data=b"12345")]), timeout=10)
            err = from_rpc_error(caught.value)
            assert (err.code, err.reason) == ("RESOURCE_EXHAUSTED", "TOO_MANY_STREAMS")
            assert err.retry_delay > 0 and err.metadata["uploaded_offset"] == "0"
            held.cancel()
        reply = wait_until(lambda: _try_upload(stub, session.upload_id), what="the place back")
        assert reply.session.uploaded_offset == 5


def _busy(stub) -> bool:
    """Is this client's one stream place taken? (A Download of a missing object says.)"""
    try:
        list(stub.Download(pb.DownloadRequest(object_id="missing"), timeout=10))
    except grpc.RpcError as exc:
        return from_rpc_error(exc).reason == "TOO_MANY_STREAMS"
    return False


def _try_upload(stub, upload_id: str):
    try:
        return stub.Upload(iter([pb.UploadChunk(upload_id=upload_id, offset=0, data=b"12345")]),
                           timeout=10)
    except grpc.RpcError as exc:
        assert from_rpc_error(exc).reason == "TOO_MANY_STREAMS"
        return None


def test_one_connection_gets_at_most_max_streams_per_connection(node_factory):
    node = node_factory(workers=1, env={"MINI_OSS_MAX_STREAMS_PER_CONNECTION": "1"})
    put(node, "obj", os.urandom(8 * MiB))
    with grpc.insecure_channel(node.addr, options=STALLING) as channel:
        stub = oss_pb2_grpc.ObjectStorageStub(channel)
        assert stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=10).max_streams_per_connection == 1
        held = stub.Download(pb.DownloadRequest(object_id="obj", chunk_size=2 * MiB))
        held.initial_metadata()  # it runs
        # The connection's one stream is taken: another call on it cannot even start ...
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=2)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with node.channel() as other:  # ... while another connection is served
            oss_pb2_grpc.ObjectStorageStub(other).GetNodeInfo(pb.GetNodeInfoRequest(), timeout=10)
        held.cancel()
        assert stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=10).workers == 1


# ------------------------------------------------------------------------------------------
# (6) file descriptors


class LimitedNode(RunningNode):
    """A node started with RLIMIT_NOFILE = (soft, hard), as a shell's ulimit would set it."""

    def __init__(self, data_dir, flags, env=None, *, nofile: tuple[int, int]):
        super().__init__(data_dir, flags, env)
        self.nofile = nofile

    def command(self) -> list[str]:
        soft, hard = self.nofile
        boot = ("import resource, runpy, sys; "
                f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
                "sys.argv[0] = 'node'; runpy.run_module('node', run_name='__main__')")
        return [sys.executable, "-c", boot] + super().command()[3:]  # drop "python -m node"


@pytest.fixture
def limited_node(tmp_path):
    nodes: list[RunningNode] = []

    def make(nofile: tuple[int, int], env: dict[str, str] | None = None, **flags) -> RunningNode:
        node = LimitedNode(tmp_path / f"limited{len(nodes)}", dict(flags), env, nofile=nofile)
        nodes.append(node)
        return node.start()

    yield make
    stop_all(nodes)


def test_worker_raises_its_soft_fd_limit_to_the_hard_one(limited_node):
    node = limited_node((64, 768), workers=1)
    assert worker(node).rlimit(psutil.RLIMIT_NOFILE) == (768, 768)


def test_out_of_fds_is_too_many_open_files_with_retry_info_never_internal(limited_node):
    node = limited_node((100, 100), env={"MINI_OSS_DOWNLOAD_STALL_TIMEOUT": "5"}, workers=1)
    proc = worker(node)
    data = os.urandom(1 * MiB)
    put(node, "small", data)
    # Four connections (gRPC would otherwise put every channel on one), each well below
    # max_streams_per_connection.
    channels = [grpc.insecure_channel(node.addr, options=STALLING + [
        ("grpc.use_local_subchannel_pool", 1), ("test.channel_index", i)]) for i in range(4)]
    try:
        for channel in channels:  # connected before the descriptors run out
            grpc.channel_ready_future(channel).result(timeout=10)
        stubs = [oss_pb2_grpc.ObjectStorageStub(c) for c in channels]
        downloads, creates = [], []
        for i in range(240):  # each Download holds its object's file while it stalls
            stub = stubs[i % len(stubs)]
            downloads.append(stub.Download(pb.DownloadRequest(object_id="small", chunk_size=4096),
                                           timeout=60))
            if i % 4 == 0:
                creates.append(stub.CreateUploadSession.future(pb.CreateUploadSessionRequest(
                    object_id=f"c{i}", file_name="f", file_size=10), timeout=60))
        outcomes: collections.Counter = collections.Counter()
        for future in creates:
            try:
                future.result()
                outcomes["create OK"] += 1
            except grpc.RpcError as exc:
                err = from_rpc_error(exc)
                outcomes[("create", err.code, err.reason, err.retry_delay is not None)] += 1
        for call in downloads:
            found = error_of(call)
            outcomes[("download",) + (found[:2] + (found[2] is not None,) if found else ("OK",))] += 1
    finally:
        for channel in channels:
            channel.close()
    allowed = {"create OK", ("create", "RESOURCE_EXHAUSTED", "TOO_MANY_OPEN_FILES", True),
               ("download", "OK"), ("download", "RESOURCE_EXHAUSTED", "TOO_MANY_OPEN_FILES", True),
               ("download", "ABORTED", "IDLE_TIMEOUT", False)}  # stalled while others were read
    assert set(outcomes) <= allowed, outcomes
    assert outcomes[("download", "RESOURCE_EXHAUSTED", "TOO_MANY_OPEN_FILES", True)] > 0, outcomes
    # The load is over: the same worker serves new connections, uploads and downloads.
    assert worker(node).pid == proc.pid
    put(node, "after", b"still serving")
    with node.channel() as channel:
        stub = oss_pb2_grpc.ObjectStorageStub(channel)
        assert read_all(stub, "after") == b"still serving"
        assert read_all(stub, "small") == data


def test_limits_module_lifts_the_limit_and_recognises_fd_exhaustion():
    """In a child process (the test's own limits stay): soft -> hard, no gRPC imported, and
    SQLite's "unable to open database file" counts as out of fds only when the process is."""
    script = """
import os, resource, sqlite3, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 256))
from node.limits import out_of_files, raise_fd_limit
assert raise_fd_limit() == (256, 256), resource.getrlimit(resource.RLIMIT_NOFILE)
assert "grpc" not in sys.modules
sql = sqlite3.OperationalError("unable to open database file")
assert not out_of_files(sql) and not out_of_files(OSError(2, "no such file"))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError as exc:
    assert out_of_files(exc)
    try:
        raise RuntimeError("later") from exc
    except RuntimeError as wrapped:
        assert out_of_files(wrapped)
assert out_of_files(sql)
for fd in held:
    os.close(fd)
assert not out_of_files(sql)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.stdout.strip() == "ok", result.stderr


# ------------------------------------------------------------------------------------------
# (7) calls whose request stream carries no message


EMPTY_KINDS = {  # method path -> does it stream responses?
    "/oss.v1.ObjectStorage/StatObject": False,
    "/oss.v1.ObjectStorage/GetNodeInfo": False,
    "/oss.v1.ObjectStorage/Download": True,
    "/grpc.health.v1.Health/Check": False,
    "/grpc.health.v1.Health/Watch": True,
}


async def _empty_call(channel: grpc.aio.Channel, path: str, streaming: bool, requests=()):
    """Call `path` as a stream-request method whose stream carries `requests` (none)."""
    if streaming:
        call = channel.stream_stream(path)(iter(requests), timeout=20)
        async for _ in call:
            pass
    else:
        await channel.stream_unary(path)(iter(requests), timeout=20)


async def _empty_batch(addr: str, rounds: int, concurrency: int = 250) -> collections.Counter:
    outcomes: collections.Counter = collections.Counter()
    async with grpc.aio.insecure_channel(addr) as channel:
        async def one(path: str, streaming: bool) -> None:
            try:
                await _empty_call(channel, path, streaming)
                outcomes[(path, "OK", "")] += 1
            except grpc.aio.AioRpcError as exc:
                err = from_rpc_error(exc)
                outcomes[(path, err.code, err.reason)] += 1
        jobs = [(path, streaming) for _ in range(rounds) for path, streaming in EMPTY_KINDS.items()]
        for start in range(0, len(jobs), concurrency):
            await asyncio.gather(*(one(*job) for job in jobs[start:start + concurrency]))
    return outcomes


def test_empty_request_streams_are_answered_and_leave_nothing_behind(node_factory):
    node = node_factory(workers=1)
    proc = worker(node)
    warm = asyncio.run(_empty_batch(node.addr, 500))
    expected = {(path, "INVALID_ARGUMENT", "INVALID_ARGUMENT") for path in EMPTY_KINDS}
    assert set(warm) == expected, warm
    before = proc.memory_info().rss
    rest = asyncio.run(_empty_batch(node.addr, 2000))
    assert set(rest) == expected and sum(rest.values()) == 2000 * len(EMPTY_KINDS), rest
    grown = proc.memory_info().rss - before
    assert grown < 50 * MiB, f"worker RSS grew {grown / MiB:.1f} MiB over 10,000 empty calls"
    # Reflection (stream-request already) answers an empty stream too, and all still serve.
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    from grpc_health.v1 import health_pb2_grpc

    with node.channel() as channel:
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        assert list(reflect.ServerReflectionInfo(iter([]), timeout=10)) == []
        answers = list(reflect.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        assert "oss.v1.ObjectStorage" in {s.name for s in answers[0].list_services_response.service}
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING
        assert oss_pb2_grpc.ObjectStorageStub(channel).GetNodeInfo(
            pb.GetNodeInfoRequest(), timeout=10).workers == 1


def test_empty_request_stream_error_carries_error_info(node):
    with node.channel() as channel:
        for path, streaming in EMPTY_KINDS.items():
            if streaming:
                call = lambda: list(channel.stream_stream(path)(iter([]), timeout=10))  # noqa: E731
            else:
                call = lambda: channel.stream_unary(path)(iter([]), timeout=10)  # noqa: E731
            with pytest.raises(grpc.RpcError) as caught:
                call()
            err = from_rpc_error(caught.value)
            assert (err.code, err.reason) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT"), path
            assert err.message == "the request stream carried no message"


def test_a_call_that_sends_no_message_ends_after_the_idle_timeout(node_factory):
    node = node_factory(workers=1, stream_idle_timeout=1)

    async def silent() -> list[tuple[str, str]]:
        never = asyncio.Event()

        async def nothing():
            await never.wait()
            yield b""  # never reached

        async with grpc.aio.insecure_channel(node.addr) as channel:
            results = []
            for path in ("/oss.v1.ObjectStorage/StatObject", "/oss.v1.ObjectStorage/Download",
                         "/grpc.health.v1.Health/Check"):
                try:
                    if EMPTY_KINDS[path]:
                        async for _ in channel.stream_stream(path)(nothing(), timeout=20):
                            pass
                    else:
                        await channel.stream_unary(path)(nothing(), timeout=20)
                    results.append(("OK", ""))
                except grpc.aio.AioRpcError as exc:
                    err = from_rpc_error(exc)
                    results.append((err.code, err.reason))
            return results

    assert asyncio.run(silent()) == [("ABORTED", "IDLE_TIMEOUT")] * 3


# ------------------------------------------------------------------------------------------
# (12b) a rate-limited Upload names the durable offset


def test_rate_limited_upload_carries_the_durable_offset(node_factory):
    node = node_factory(workers=1, rate_limit_requests=2, rate_limit_burst=1)
    with node.channel() as channel:
        stub = oss_pb2_grpc.ObjectStorageStub(channel)

        def call(fn):
            while True:  # wait out RATE_LIMITED for the set-up calls
                try:
                    return fn()
                except grpc.RpcError as exc:
                    err = from_rpc_error(exc)
                    if err.reason != "RATE_LIMITED":
                        raise
                    time.sleep(err.retry_delay)

        session = call(lambda: stub.CreateUploadSession(pb.CreateUploadSessionRequest(
            object_id="paced", file_name="f", file_size=10)))
        reply = call(lambda: stub.Upload(iter([pb.UploadChunk(
            upload_id=session.upload_id, offset=0, data=b"12345")]), timeout=10))
        assert reply.session.uploaded_offset == 5
        limited = []
        for upload_id in [session.upload_id] * 6 + ["unknown-session"] * 6:
            try:
                stub.Upload(iter([pb.UploadChunk(upload_id=upload_id, offset=5)]), timeout=10)
            except grpc.RpcError as exc:
                err = from_rpc_error(exc)
                if err.reason == "RATE_LIMITED":
                    limited.append((upload_id, err))
        assert {u for u, _ in limited} == {session.upload_id, "unknown-session"}
        for upload_id, err in limited:
            assert err.code == "RESOURCE_EXHAUSTED" and err.retry_delay > 0
            assert err.metadata["uploaded_offset"] == ("5" if upload_id == session.upload_id else "0")
        # Calls answered before the servicer (no request message) are charged to the rate too.
        reasons = set()
        for _ in range(8):
            with pytest.raises(grpc.RpcError) as caught:
                channel.stream_unary("/oss.v1.ObjectStorage/StatObject")(iter([]), timeout=10)
            reasons.add(from_rpc_error(caught.value).reason)
        assert "RATE_LIMITED" in reasons and reasons <= {"RATE_LIMITED", "INVALID_ARGUMENT"}


def test_settings_reach_the_grpc_server_options():
    from node.server import grpc_options

    assert ("grpc.max_concurrent_streams", 7) in grpc_options(Settings(max_streams_per_connection=7))
    assert Settings().max_streams_per_client >= 1000 and Settings().max_streams_per_connection >= 256
