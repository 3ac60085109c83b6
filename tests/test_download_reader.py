"""DownloadReader (node.streams): buffered with the kernel asked to read ahead, or around a cold
page cache with O_DIRECT, a download reads exactly the requested range, chunk by chunk with the
right CRC-32 in the message it sends, and never asks the kernel for bytes outside the range (a
zero-length advice would mean "to the end of the file")."""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import page_cache
from node.catalog import ObjectRecord
from node.pb import oss_pb2
from node.streams import DownloadReader
from tests.contract import payload

SIZE = 300_000
DATA = payload(SIZE, 7)
INFO = oss_pb2.ObjectInfo(object_id="o", size=SIZE).SerializeToString()


def read_all(path, start: int, end: int, chunk: int, readahead: int, direct: bool) -> bytes:
    obj = ObjectRecord(object_id="o", generation="g", file_name="f", size=SIZE, sha256="",
                       content_type="", metadata={}, created_at_ms=0, disk_name="object")
    reader = DownloadReader(os.open(path, os.O_RDONLY), obj, start, end, chunk, readahead, direct)
    got = bytearray()
    offset = start
    try:
        while offset < end:
            message, length = reader.message(offset, INFO if offset == start else b"")
            parsed = oss_pb2.DownloadChunk.FromString(message)
            assert parsed.offset == offset and len(parsed.data) == length and 0 < length <= chunk
            assert parsed.crc32 == zlib.crc32(parsed.data)
            assert parsed.HasField("object") == (offset == start)  # ObjectInfo on the first only
            got += parsed.data
            offset += length
            assert reader._advised <= end
    finally:
        reader.close()
    return bytes(got)


@pytest.fixture(scope="module")
def object_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("obj") / "object"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)  # clean pages: dropping them from the cache (below) always works
    os.close(fd)
    return path


def drop_cached(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


# At most this many chunks per example. Any chunk size and any range can still be drawn, but not
# a tiny chunk over a long range: a 1-byte chunk over the whole object, read cold, is 300,000
# O_DIRECT reads from the device (27 s alone on this 2-core VM) that
# exercise nothing 2,048 of them do not (a 2,048-byte range still crosses a 4 KiB block edge).
MAX_CHUNKS = 2048


@st.composite
def chunk_and_length(draw):
    chunk = draw(st.integers(1, 70_000))
    return chunk, draw(st.integers(0, min(SIZE, chunk * MAX_CHUNKS)))


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, SIZE), chunk_length=chunk_and_length(),
       readahead=st.sampled_from([0, 1, 4096, 65_536, 1 << 20]), direct=st.booleans())
def test_chunks_cover_the_range_exactly(object_file, start, chunk_length, readahead, direct):
    chunk, length = chunk_length
    if direct:  # cold: what a direct read must find on the device, not in the cache
        drop_cached(object_file)
    end = min(SIZE, start + length)
    assert read_all(object_file, start, end, chunk, readahead, direct) == DATA[start:end]


def test_a_cold_range_is_read_around_the_cache_and_a_warm_one_from_it(tmp_path):
    path = tmp_path / "object"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert page_cache.cached_pages(fd, 0, SIZE) == 0, "this kernel keeps the pages: no cold case"
        assert read_all(path, 0, SIZE, 65_536, 1 << 20, direct=True) == DATA
        assert page_cache.cached_pages(fd, 0, SIZE) == 0, "a cold download filled the page cache"
        assert read_all(path, 0, SIZE, 65_536, 1 << 20, direct=False) == DATA
        assert page_cache.fully_cached(fd, 0, SIZE), "a buffered read leaves the pages cached"
        assert read_all(path, 1000, SIZE - 5, 65_536, 0, direct=True) == DATA[1000:SIZE - 5]
    finally:
        os.close(fd)
