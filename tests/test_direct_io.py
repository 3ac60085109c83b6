"""O_DIRECT upload writes (node.direct_io): the bytes in the file are exactly the bytes written,
whatever the chunk sizes, flushes, restarts and jumps; the held tail reaches the file before a
sync; a device that refuses an aligned write gets the same bytes the buffered way; and a node
with `direct_io` on or off stores and resumes unaligned uploads byte for byte."""

from __future__ import annotations

import hashlib
import mmap
import os
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import direct_io
from node.direct_io import ALIGN, DirectAppender, open_direct
from node.storage import Storage
from tests.contract import (COMMITTED, create, download_all, get_session, payload, sha256_hex,
                            upload_data)

SIZES = st.sampled_from([1, 7, ALIGN - 1, ALIGN, ALIGN + 1, 3 * ALIGN + 5, 65536, 200_000])
STEPS = st.lists(st.one_of(SIZES.map(lambda n: ("write", n)),
                           st.just(("flush", 0)), st.just(("reopen", 0))), max_size=40)


def new_file(path) -> tuple[int, int | None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    return fd, open_direct(str(path))


@settings(max_examples=60, deadline=None)
@given(steps=STEPS, seed=st.integers(0, 2**16))
def test_the_file_holds_exactly_the_bytes_written(tmp_path_factory, steps, seed):
    path = tmp_path_factory.mktemp("direct") / "part"
    fd, direct_fd = new_file(path)
    appender = DirectAppender(fd, direct_fd)
    model = bytearray()
    try:
        for op, n in steps:
            if op == "write":
                data = payload(n, seed + len(model))
                appender.write(len(model), memoryview(data))
                model += data
            elif op == "flush":
                appender.flush()
                assert path.read_bytes() == bytes(model)
            else:  # a new stream on the same part: starts from the file, mid-block
                appender.flush()
                appender.close()
                appender = DirectAppender(fd, open_direct(str(path)))
        appender.flush()
        assert path.read_bytes() == bytes(model)
    finally:
        appender.close()
        os.close(fd)


def test_direct_writes_bypass_the_page_cache_and_hold_only_a_partial_block(tmp_path):
    fd, direct_fd = new_file(tmp_path / "part")
    if direct_fd is None:
        pytest.fail("this file system refuses O_DIRECT; the node would fall back to buffered writes")
    appender = DirectAppender(fd, direct_fd)
    data = payload(5 * ALIGN + 123, 9)
    appender.write(0, data)
    # Whole blocks went to the file; the partial last block waits in memory until a flush.
    assert os.fstat(fd).st_size == 5 * ALIGN
    assert bytes(appender.tail) == data[5 * ALIGN:]
    appender.flush()
    assert os.fstat(fd).st_size == len(data)
    appender.write(len(data), b"x" * ALIGN)  # rewrites the flushed partial block in place
    appender.flush()
    assert (tmp_path / "part").read_bytes() == data + b"x" * ALIGN
    appender.close()
    os.close(fd)


def test_a_refused_direct_write_falls_back_to_buffered_with_the_same_bytes(tmp_path, monkeypatch):
    fd, direct_fd = new_file(tmp_path / "part")
    assert direct_fd is not None
    appender = DirectAppender(fd, direct_fd)
    first = payload(ALIGN + 10, 1)
    appender.write(0, first)
    # A buffer one byte off alignment: the kernel answers EINVAL, as a device with larger
    # blocks than ALIGN would.
    scratch = mmap.mmap(-1, 4 * 1024 * 1024)
    monkeypatch.setattr(direct_io, "aligned_buffer", lambda size: memoryview(scratch)[1:size + 1])
    second = payload(3 * ALIGN, 2)
    appender.write(len(first), second)
    assert appender.direct_fd is None
    third = payload(777, 3)
    appender.write(len(first) + len(second), third)
    appender.flush()
    assert (tmp_path / "part").read_bytes() == first + second + third
    os.close(fd)


def test_sync_makes_the_held_tail_part_of_the_file(tmp_path):
    storage = Storage(str(tmp_path / "data"))
    storage.create_part("p")
    claim = storage.claim(storage.layout.part("p"))
    assert claim is not None
    data = payload(3 * ALIGN + 1, 4)
    claim.write(0, data)
    claim.sync()
    assert claim.size() == len(data)
    assert claim.hash_prefix(len(data)).hexdigest() == hashlib.sha256(data).hexdigest()
    claim.truncate(ALIGN + 3)     # a torn tail cut: the next write starts mid-block
    claim.write(ALIGN + 3, data[ALIGN + 3:])
    claim.sync()
    claim.release()
    assert pathlib.Path(storage.layout.part("p")).read_bytes() == data


@pytest.mark.parametrize("direct", ["1", "0"])
def test_unaligned_chunks_and_resumes_store_every_byte(node_factory, direct):
    node = node_factory(workers=1, env={"MINI_OSS_DIRECT_IO": direct})
    stub = node.stub()
    data = payload(3 * 1024 * 1024 + 4097, 5)
    s = create(stub, "odd", data)
    # Three streams whose ends fall mid-block, each resumed from the node's durable offset.
    for end, chunk in ((100_003, 4097), (1_500_001, 65_537), (len(data), 1_000_003)):
        start = get_session(stub, s.upload_id).uploaded_offset
        resp = upload_data(stub, s.upload_id, data, chunk, start=start, end=end)
    assert resp.session.state == COMMITTED
    assert resp.object.sha256 == sha256_hex(data)
    assert download_all(stub, "odd").data == data
