"""DownloadReader (node.streams): with the kernel asked to read ahead, a download still reads
exactly the requested range, chunk by chunk with the right CRC-32, and never asks the kernel for
bytes outside the range (a zero-length advice would mean "to the end of the file")."""

from __future__ import annotations

import os
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from node.catalog import ObjectRecord
from node.streams import DownloadReader
from tests.contract import payload

SIZE = 300_000
DATA = payload(SIZE, 7)


@settings(max_examples=80, deadline=None)
@given(start=st.integers(0, SIZE), length=st.integers(0, SIZE), chunk=st.integers(1, 70_000),
       readahead=st.sampled_from([0, 1, 4096, 65_536, 1 << 20]))
def test_chunks_cover_the_range_exactly(tmp_path_factory, start, length, chunk, readahead):
    path = tmp_path_factory.mktemp("obj") / "object"
    path.write_bytes(DATA)
    end = min(SIZE, start + length)
    obj = ObjectRecord(object_id="o", generation="g", file_name="f", size=SIZE, sha256="",
                       content_type="", metadata={}, created_at_ms=0, disk_name="object")
    reader = DownloadReader(os.open(path, os.O_RDONLY), obj, start, end, chunk, readahead)
    got = bytearray()
    offset = start
    try:
        while offset < end:
            data, crc = reader.read(offset)
            assert 0 < len(data) <= chunk and crc == zlib.crc32(data)
            got += data
            offset += len(data)
            assert reader._advised <= end
    finally:
        reader.close()
    assert bytes(got) == DATA[start:end]
