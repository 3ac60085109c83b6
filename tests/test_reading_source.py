"""The bare server's reading source (`--read-source`, tools/bench/reading_source.py) really reads.

The source is the yardstick of "node / reading source" for warm downloads: if it sent messages it
kept, it would measure the plain bare source again. So: a real client's download of it verifies
(every chunk's CRC-32, the SHA-256 that StatObject gives) and has the bare source's bytes; every
message is built from the file as it is now (a byte changed in the file shows in the next
download, with a CRC-32 of the changed data); ranges come out right; the file goes when the
server stops.
"""

from __future__ import annotations

import hashlib
import os

import grpc
import pytest

from node.checksums import crc32
from node.client import Client
from node.pb import oss_pb2, oss_pb2_grpc
from tools.bench.bare_server import source_buffer
from tools.bench.targets import spawn_bare

KiB, MiB = 1024, 1024 ** 2
SIZE = 1 * MiB + 12345  # a short last chunk
CHUNK = 256 * KiB
pytestmark = pytest.mark.timeout(60)


def expected_content() -> bytes:
    buffer = source_buffer(CHUNK)
    return (buffer * (SIZE // CHUNK + 1))[:SIZE]


@pytest.fixture
def reading_source(tmp_path):
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    with spawn_bare(workers=1, object_size=SIZE, chunk_size=CHUNK, log_dir=str(tmp_path),
                    read_source=True, source_dir=str(source_dir)) as target:
        (path,) = source_dir.iterdir()
        yield target, path
    assert list(source_dir.iterdir()) == [], "the source file outlived its server"


def raw_download(addr: str, **request) -> list[oss_pb2.DownloadChunk]:
    with grpc.insecure_channel(addr) as channel:
        stub = oss_pb2_grpc.ObjectStorageStub(channel)
        return list(stub.Download(oss_pb2.DownloadRequest(object_id="any", **request), timeout=10))


def test_a_client_download_verifies_and_has_the_bare_sources_bytes(tmp_path, reading_source):
    target, path = reading_source
    assert path.read_bytes() == expected_content()
    out = tmp_path / "out.bin"
    with Client(target.addr) as client:
        info = client.stat("any")
        client.download("any", str(out))  # checks every chunk's CRC-32 and the SHA-256
    assert out.read_bytes() == expected_content()
    assert info.sha256 == hashlib.sha256(expected_content()).hexdigest()


def test_every_message_is_read_from_the_file_as_it_is_now(reading_source):
    target, path = reading_source
    before = raw_download(target.addr, chunk_size=CHUNK)
    changed = b"\xff" * 100
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, changed, CHUNK + 7)
    finally:
        os.close(fd)
    after = raw_download(target.addr, chunk_size=CHUNK)
    assert [c.offset for c in after] == [c.offset for c in before] == [0, CHUNK, 2 * CHUNK, 3 * CHUNK, 4 * CHUNK]
    assert after[1].data[7:107] == changed and after[1].data != before[1].data
    assert all(c.crc32 == crc32(c.data) for c in before + after)
    assert after[0].HasField("object") and not any(c.HasField("object") for c in after[1:])


def test_a_range_is_its_bytes_in_chunks_from_its_start(reading_source):
    target, _path = reading_source
    start, end = 1000, 600 * KiB
    chunks = raw_download(target.addr, start_offset=start, end_offset=end, chunk_size=CHUNK)
    assert chunks[0].offset == start
    assert b"".join(c.data for c in chunks) == expected_content()[start:end]
    assert all(c.crc32 == crc32(c.data) for c in chunks)
