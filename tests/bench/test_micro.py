"""pytest-benchmark micro benchmarks of the hot pieces, grouped so the table shows ratios.

In the normal test command pyproject's addopts carries --benchmark-disable: each runs once as a
plain test (and checks its result, never its time). To measure:

    pytest tests/bench/test_micro.py --benchmark-enable --benchmark-columns=min,median,ops

pytest-benchmark prints each group with every figure's ratio to the group's fastest in
parentheses: that ratio (e.g. hand codec vs protobuf, CRC-32C vs CRC-32 vs SHA-256) is what to
read, not the absolute time, which depends on the machine and its neighbours.
"""

import hashlib
import os
import zlib

import google_crc32c
import pytest

from node import checksums
from node.pb import oss_pb2 as pb
from node.session_rules import plan_chunk
from tools.bench import codec

MiB = 1024 * 1024
DATA = os.urandom(MiB)
CRC = zlib.crc32(DATA)
UPLOAD_ID = "u" * 22


@pytest.mark.benchmark(group="checksum of 1 MiB")
def test_zlib_crc32(benchmark):
    benchmark.extra_info["bytes"] = MiB
    assert benchmark(zlib.crc32, DATA) == CRC


@pytest.mark.benchmark(group="checksum of 1 MiB")
def test_isal_crc32_the_nodes(benchmark):
    """node.checksums.crc32: the same value as zlib's, from ISA-L."""
    benchmark.extra_info["bytes"] = MiB
    assert benchmark(checksums.crc32, DATA) == CRC


@pytest.mark.benchmark(group="checksum of 1 MiB")
def test_google_crc32c(benchmark):
    benchmark.extra_info["bytes"] = MiB
    assert benchmark(google_crc32c.value, DATA) == google_crc32c.value(DATA)


@pytest.mark.benchmark(group="checksum of 1 MiB")
def test_sha256(benchmark):
    benchmark.extra_info["bytes"] = MiB
    assert benchmark(lambda: hashlib.sha256(DATA).digest()) == hashlib.sha256(DATA).digest()


@pytest.mark.benchmark(group="encode UploadChunk of 1 MiB")
def test_encode_upload_chunk_protobuf(benchmark):
    raw = benchmark(lambda: pb.UploadChunk(upload_id=UPLOAD_ID, offset=7 * MiB, data=DATA,
                                           crc32=CRC).SerializeToString())
    assert pb.UploadChunk.FromString(raw).data == DATA


BODY = codec.upload_body(DATA, CRC)


@pytest.mark.benchmark(group="encode UploadChunk of 1 MiB")
def test_encode_upload_chunk_bench_codec(benchmark):
    """What the load generator does per chunk: a tiny prefix + a prebuilt body (one join)."""
    raw = benchmark(lambda: codec.upload_prefix(UPLOAD_ID, 7 * MiB, MiB) + BODY)
    msg = pb.UploadChunk.FromString(raw)
    assert (msg.offset, msg.crc32, msg.data == DATA) == (7 * MiB, CRC, True)


UPLOAD_RAW = pb.UploadChunk(upload_id=UPLOAD_ID, offset=7 * MiB, data=DATA, crc32=CRC).SerializeToString()


@pytest.mark.benchmark(group="parse UploadChunk of 1 MiB")
def test_parse_upload_chunk_protobuf(benchmark):
    """What the node pays per chunk with protobuf objects: parse, then read .data (a copy)."""
    data = benchmark(lambda: pb.UploadChunk.FromString(UPLOAD_RAW).data)
    assert data == DATA


DOWNLOAD_RAW = pb.DownloadChunk(offset=7 * MiB, data=DATA, crc32=CRC).SerializeToString()


@pytest.mark.benchmark(group="parse DownloadChunk of 1 MiB")
def test_parse_download_chunk_protobuf(benchmark):
    data = benchmark(lambda: pb.DownloadChunk.FromString(DOWNLOAD_RAW).data)
    assert data == DATA


@pytest.mark.benchmark(group="parse DownloadChunk of 1 MiB")
def test_parse_download_chunk_bench_codec(benchmark):
    offset, data, crc, info = benchmark(codec.decode_download_chunk, DOWNLOAD_RAW)
    assert (offset, crc, info, data == DATA) == (7 * MiB, CRC, None, True)


@pytest.mark.benchmark(group="serialize DownloadChunk of 1 MiB")
def test_serialize_download_chunk_protobuf(benchmark):
    raw = benchmark(lambda: pb.DownloadChunk(offset=7 * MiB, data=DATA, crc32=CRC).SerializeToString())
    assert raw == DOWNLOAD_RAW


@pytest.mark.benchmark(group="session rules")
def test_plan_chunk(benchmark):
    plan = benchmark(plan_chunk, uploaded_offset=7 * MiB, file_size=256 * MiB, offset=7 * MiB,
                     length=MiB, max_chunk_size=4 * MiB)
    assert (plan.skip, plan.length, plan.new_offset) == (0, MiB, 8 * MiB)
