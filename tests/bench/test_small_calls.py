"""Small mode stores each object with one PutObject call (`--small-calls put`, the default), or
with a session and a one-message Upload (`session`), against the bare ceiling and the node alike.

The bare server must take the same calls as the node (a ratio of one call to two would measure
the protocol, not the node), and the verifying sink must check a put's data as it checks an
Upload's. Against a real node the objects must really be committed: listed, with their size.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import grpc
import pytest

from node import errors
from node.checksums import crc32
from node.client import Client
from node.pb import oss_pb2, oss_pb2_grpc
from node.status import from_rpc_error
from tools.bench.cli import BenchConfig
from tools.bench.targets import spawn_bare

KiB = 1024
SMALL = ["--small", "--file_size", "16KiB", "--concurrency", "4", "--processes", "1", "--channels", "2"]


def small_bench(addr: str, tmp_path, calls: str, *extra: str) -> dict:
    """Run `upload_bench --small` with `--small-calls calls`; its JSON report."""
    out = tmp_path / f"small-{calls}.json"
    proc = subprocess.run([sys.executable, "-m", "tools.bench.upload_bench", "--addr", addr, *SMALL,
                           "--small-calls", calls, *extra, "--json", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def put(addr: str, data: bytes, **fields) -> oss_pb2.PutObjectResponse:
    with grpc.insecure_channel(addr) as channel:
        return oss_pb2_grpc.ObjectStorageStub(channel).PutObject(
            oss_pb2.PutObjectRequest(object_id="put", file_name="put.bin", data=data, **fields), timeout=10)


@pytest.mark.parametrize(("file_size", "chunk_size", "calls", "one_call"), [
    (16 * KiB, 1024 * KiB, "put", True), (1024 * KiB, 1024 * KiB, "put", True), (0, 1024 * KiB, "put", True),
    (1024 * KiB + 1, 1024 * KiB, "put", False), (16 * KiB, 1024 * KiB, "session", False)])
def test_only_objects_of_one_chunk_are_put_in_one_call(file_size, chunk_size, calls, one_call):
    cfg = BenchConfig(mode="upload", file_size=file_size, chunk_size=chunk_size, small_calls=calls)
    assert cfg.one_call_put is one_call


@pytest.mark.timeout(60)
@pytest.mark.parametrize("calls", ["put", "session"])
def test_small_mode_against_the_bare_server_counts_every_object(tmp_path, calls):
    with spawn_bare(workers=1, object_size=16 * KiB, chunk_size=1024 * KiB, log_dir=str(tmp_path)) as bare:
        report = small_bench(bare.addr, tmp_path, calls, "--count", "5")
    assert report["config"]["upload_calls"] == calls
    assert report["errors"] == {}
    assert report["objects"] == 20 and report["bytes"] == 20 * 16 * KiB
    assert report["durable_commits_per_s"] > 0


@pytest.mark.timeout(60)
def test_the_verifying_sink_checks_a_puts_crc32_and_sha256(tmp_path):
    data = b"small object" * 1000
    sha = hashlib.sha256(data).hexdigest()
    with spawn_bare(workers=1, object_size=16 * KiB, chunk_size=256 * KiB, log_dir=str(tmp_path),
                    verify_sink=True) as sink:
        answer = put(sink.addr, data, crc32=crc32(data), sha256=sha)
        assert (answer.object.size, answer.object.sha256) == (len(data), sha)
        with pytest.raises(grpc.RpcError) as bad_crc:
            put(sink.addr, data, crc32=crc32(data) ^ 1)
        with pytest.raises(grpc.RpcError) as bad_sha:
            put(sink.addr, data, crc32=crc32(data), sha256=hashlib.sha256(b"other").hexdigest())
    assert isinstance(from_rpc_error(bad_crc.value), errors.ChecksumMismatch)  # DATA_LOSS, as the node
    assert isinstance(from_rpc_error(bad_sha.value), errors.Sha256Mismatch)


@pytest.mark.timeout(90)
def test_small_mode_puts_objects_the_node_commits(node_factory, tmp_path):
    """Fails (UNIMPLEMENTED counted as errors) against a node without PutObject."""
    node = node_factory(workers=2)
    report = small_bench(node.addr, tmp_path, "put", "--count", "3", "--sha256", "--keep")
    assert report["config"]["upload_calls"] == "put"
    assert report["errors"] == {}, report["error_samples"]
    assert report["objects"] == 12
    with Client(node.addr) as client:
        listed = list(client.list_objects(prefix="bench-up-"))
    assert len(listed) == report["objects"]
    assert {info.size for info in listed} == {16 * KiB}
