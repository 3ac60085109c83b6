"""node.chunk_read: a chunk read straight into its message is byte for byte the message
`wire.encode_download_chunk` builds, whatever the CRC's varint length, and a short file is an
error, never a message padded with whatever the memory held."""

from __future__ import annotations

import os
import random

import pytest

from node import chunk_read
from node.checksums import crc32
from node.pb import oss_pb2 as pb
from node.wire import encode_download_chunk


def test_the_bytes_filler_is_in_use_on_this_interpreter():
    # Without it every message is joined again: correct, but the copy this module saves is back.
    assert chunk_read._FILLER is not None


@pytest.fixture
def blob(tmp_path):
    data = os.urandom(3 << 20)
    path = tmp_path / "object"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


def test_messages_match_the_encoder_at_any_offset_and_length(blob):
    fd, data = blob
    info = pb.ObjectInfo(object_id="o", size=len(data), generation="g").SerializeToString()
    rng = random.Random(7)
    cases = [(0, 1 << 20, info), (1 << 20, 1 << 20, b""), (len(data) - 1, 1, b""), (5, 4096, b"")]
    cases += [(rng.randrange(len(data) - 70_000), rng.randrange(1, 70_000), b"") for _ in range(200)]
    lengths = set()
    for offset, length, object_info in cases:
        message, crc = chunk_read.read_message(fd, offset, length, object_info)
        chunk = data[offset:offset + length]
        assert crc == crc32(chunk)
        assert message == encode_download_chunk(offset, chunk, crc, object_info)
        parsed = pb.DownloadChunk.FromString(message)
        assert (parsed.offset, parsed.data, parsed.crc32) == (offset, chunk, crc)
        lengths.add(len(encode_download_chunk(0, b"", crc)))
    # Both ways were taken: CRCs of five varint bytes (filled in place) and shorter (joined).
    assert {len(b"\x18") + 5, len(b"\x18") + 4} <= lengths


def test_a_file_shorter_than_asked_is_an_error(blob):
    fd, data = blob
    with pytest.raises(OSError, match="short read"):
        chunk_read.read_message(fd, len(data) - 10, 20)
    with pytest.raises(OSError, match="short read"):
        chunk_read.read_message(fd, len(data) + 5, 20)


def test_a_read_error_carries_its_errno(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)  # a directory: pread fails with EISDIR
    try:
        with pytest.raises(IsADirectoryError):
            chunk_read.read_message(fd, 0, 10)
    finally:
        os.close(fd)
