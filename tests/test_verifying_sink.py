"""The bare server's verifying sink (`--verify-sink`, tools/bench/verifying_sink.py) really verifies.

The sink is the yardstick of "upload >= 0.80 x a verifying sink": if its checks were skipped it
would measure the plain sink again. So: the real client's upload comes back with the SHA-256 of
its bytes; a chunk with a wrong CRC-32, a gap in the offsets or a wrong declared SHA-256 ends
the stream with the node's error; and the plain sink, which never decodes, takes the bad CRC-32.
Each test starts its own one-worker server on a port of its own.
"""

from __future__ import annotations

import hashlib
import random

import grpc
import pytest

from node import errors
from node.checksums import crc32
from node.client import Client
from node.pb import oss_pb2, oss_pb2_grpc
from node.status import from_rpc_error
from tools.bench.targets import spawn_bare

KiB, MiB = 1024, 1024 ** 2
pytestmark = pytest.mark.timeout(60)


def start_sink(tmp_path, verify: bool):
    return spawn_bare(workers=1, object_size=1 * MiB, chunk_size=256 * KiB,
                      log_dir=str(tmp_path), verify_sink=verify)


@pytest.fixture(scope="module")
def verifying_sink(tmp_path_factory):
    """One verifying sink for the module (it keeps no state between streams)."""
    with start_sink(tmp_path_factory.mktemp("sink"), verify=True) as sink:
        yield sink


def raw_upload(addr: str, chunks: list[oss_pb2.UploadChunk], size: int) -> oss_pb2.UploadResponse:
    """Create a session of `size` bytes and send `chunks` (the first gets its upload_id)."""
    with grpc.insecure_channel(addr) as channel:
        stub = oss_pb2_grpc.ObjectStorageStub(channel)
        session = stub.CreateUploadSession(oss_pb2.CreateUploadSessionRequest(
            object_id="raw", file_name="raw", file_size=size))
        chunks[0].upload_id = session.upload_id
        return stub.Upload(iter(chunks), timeout=10)


def chunk(offset: int, data: bytes, crc32: int) -> oss_pb2.UploadChunk:
    return oss_pb2.UploadChunk(offset=offset, data=data, crc32=crc32)


def test_the_client_gets_the_sha256_of_what_it_sent(tmp_path, verifying_sink):
    data = random.Random(1).randbytes(3 * MiB + 12345)  # a short last chunk
    source = tmp_path / "object.bin"
    source.write_bytes(data)
    with Client(verifying_sink.addr) as client:
        info = client.upload(str(source), "object", chunk_size=256 * KiB)
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()


def test_a_wrong_crc32_ends_the_stream_with_checksum_mismatch(verifying_sink):
    data = b"x" * (64 * KiB)
    good = chunk(0, data, crc32(data))
    bad = chunk(len(data), data, crc32(data) ^ 1)
    with pytest.raises(grpc.RpcError) as caught:
        raw_upload(verifying_sink.addr, [good, bad], 2 * len(data))
    err = from_rpc_error(caught.value)
    assert isinstance(err, errors.ChecksumMismatch)  # DATA_LOSS, as the node answers
    assert err.metadata["offset"] == str(len(data))


def test_a_gap_and_a_wrong_sha256_are_refused_like_the_node_does(verifying_sink):
    data = b"y" * (64 * KiB)
    crc = crc32(data)
    with pytest.raises(grpc.RpcError) as gap:
        raw_upload(verifying_sink.addr, [chunk(0, data, crc), chunk(2 * len(data), data, crc)],
                   3 * len(data))
    wrong = chunk(0, data, crc)
    wrong.sha256 = "0" * 64
    with pytest.raises(grpc.RpcError) as mismatch:
        raw_upload(verifying_sink.addr, [wrong], len(data))
    assert isinstance(from_rpc_error(gap.value), errors.OffsetMismatch)
    assert isinstance(from_rpc_error(mismatch.value), errors.Sha256Mismatch)


def test_the_plain_sink_never_decodes_so_takes_a_wrong_crc32(tmp_path):
    data = b"z" * (64 * KiB)
    with start_sink(tmp_path, verify=False) as sink:
        response = raw_upload(sink.addr, [chunk(0, data, crc32(data) ^ 1)], len(data))
    assert response.session.state == oss_pb2.UploadSession.COMMITTED
    assert response.object.size == len(data) and response.object.sha256 == ""

