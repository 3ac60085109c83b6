"""API.md "Download rules" against a real node, plus a small load check of both directions.

`download_all` (tests/contract.py) checks the per-message rules on every download here: offsets
in order and contiguous, a right CRC-32 on each chunk, ObjectInfo on the first message only.
"""

from __future__ import annotations

import concurrent.futures
import math

import grpc
import pytest

from node.pb import oss_pb2 as pb
from node.pb import oss_pb2_grpc
from tests.contract import (create, download_all, KiB, MiB, node_info, payload, put, raises,
                            sha256_hex, stat, upload_data)

SHARED_NODE = True  # tests that take `node`/`stub` share one node per catalog (conftest)

#: A download reads one catalog row (the object's), by the same query on both backends, and that
#: query runs on PostgreSQL in tests/test_catalog.py and in every other contract module; the
#: rest of a download is files and gRPC. So these run on SQLite only, which keeps the suite
#: within its time budget.
CATALOGS = ["sqlite"]

SIZE = 10_000


@pytest.fixture
def small_node(node_factory):
    """A node with small chunk limits, so chunk-size rules show on small objects."""
    return node_factory(workers=1, max_chunk_size=64 * KiB, default_chunk_size=16 * KiB)


def test_download_whole_object_in_order_with_crcs_and_info_first(node, stub):
    data = payload(3 * MiB + 123)
    info = put(stub, "obj", data, file_name="a.bin", content_type="application/x-test").object
    got = download_all(stub, "obj", max_chunk=node_info(stub).default_chunk_size)
    assert got.data == data
    assert got.info == info
    assert got.chunks[0].offset == 0
    assert sha256_hex(got.data) == info.sha256


def test_download_chunk_sizes_are_clamped(small_node):
    stub = small_node.stub()
    data = payload(150 * KiB + 7)
    put(stub, "obj", data)
    cases = {0: 16 * KiB, 1: 4 * KiB, 4 * KiB: 4 * KiB, 10_000: 10_000, 64 * KiB: 64 * KiB,
             64 * KiB + 1: 64 * KiB, 2**31 - 1: 64 * KiB}
    for asked, effective in cases.items():
        got = download_all(stub, "obj", max_chunk=effective, chunk_size=asked)
        assert got.data == data, asked
        # Clamped, not just capped: a tiny request must not turn into a flood of tiny messages.
        assert len(got.chunks) <= math.ceil(len(data) / effective) + 1, (
            asked, len(got.chunks))


def test_negative_download_chunk_size_is_invalid_argument(node, stub):
    put(stub, "obj", payload(100))
    raises(lambda: stub.Download(pb.DownloadRequest(object_id="obj", chunk_size=-1), timeout=10),
           "INVALID_ARGUMENT", "INVALID_ARGUMENT")


# (start_offset, end_offset or None) -> the slice of the object expected, for SIZE bytes.
RANGES = [
    ((0, None), (0, SIZE)),
    ((100, 200), (100, 200)),
    ((100, None), (100, SIZE)),
    ((-100, None), (SIZE - 100, SIZE)),
    ((-SIZE, None), (0, SIZE)),
    ((-SIZE - 5000, None), (0, SIZE)),          # reaching back before byte 0 starts at 0
    ((-100, SIZE - 50), (SIZE - 100, SIZE - 50)),
    ((0, SIZE + 5000), (0, SIZE)),              # end past the size is cut
    ((SIZE - 1, None), (SIZE - 1, SIZE)),
    ((SIZE - 1, SIZE + 1), (SIZE - 1, SIZE)),
    ((-2**63, 2**63 - 1), (0, SIZE)),           # extremes: no overflow
]


@pytest.mark.parametrize("req,expected", RANGES, ids=[str(r[0]) for r in RANGES])
def test_download_ranges(node, stub, req, expected):
    data = payload(SIZE)
    info = put(stub, "obj", data).object
    start, end = req
    fields = {"start_offset": start}
    if end is not None:
        fields["end_offset"] = end
    got = download_all(stub, "obj", chunk_size=4 * KiB, max_chunk=4 * KiB, **fields)
    assert got.chunks[0].offset == expected[0]
    assert got.data == data[expected[0]:expected[1]]
    assert got.info == info


EMPTY = [(5000, 5000), (0, 0), (SIZE, None), (SIZE, SIZE + 100), (-100, SIZE - 100)]


@pytest.mark.parametrize("start,end", EMPTY, ids=[str(r) for r in EMPTY])
def test_empty_range_is_one_message_with_object_and_no_data(node, stub, start, end):
    info = put(stub, "obj", payload(SIZE)).object
    fields = {"start_offset": start}
    if end is not None:
        fields["end_offset"] = end
    chunks = list(stub.Download(pb.DownloadRequest(object_id="obj", **fields), timeout=10))
    assert len(chunks) == 1
    assert chunks[0].HasField("object") and chunks[0].object == info
    assert chunks[0].data == b""


BAD_RANGES = [
    (SIZE + 1, None),          # start past the size
    (SIZE + 1, SIZE + 5000),   # end is cut to the size, start is still past it
    (0, -1),                   # negative end
    (-5, -1),
    (200, 100),                # end before start
    (-100, SIZE - 200),        # start (SIZE-100) after end
    (2**63 - 1, None),
    (0, -2**63),
]


@pytest.mark.parametrize("start,end", BAD_RANGES, ids=[str(r) for r in BAD_RANGES])
def test_bad_ranges_are_invalid_range(node, stub, start, end):
    put(stub, "obj", payload(SIZE))
    fields = {"start_offset": start}
    if end is not None:
        fields["end_offset"] = end
    raises(lambda: stub.Download(pb.DownloadRequest(object_id="obj", **fields), timeout=10),
           "OUT_OF_RANGE", "INVALID_RANGE")


def test_ranges_of_a_zero_byte_object(node, stub):
    put(stub, "empty", b"")
    for fields in ({}, {"start_offset": -10}, {"end_offset": 10}):
        chunks = list(stub.Download(pb.DownloadRequest(object_id="empty", **fields), timeout=10))
        assert len(chunks) == 1 and chunks[0].HasField("object") and chunks[0].data == b""
    raises(lambda: stub.Download(pb.DownloadRequest(object_id="empty", start_offset=1),
                                 timeout=10), "OUT_OF_RANGE", "INVALID_RANGE")


def test_if_generation_match_pins_the_version(node, stub):
    data = payload(SIZE, 1)
    v1 = put(stub, "obj", data).object
    got = download_all(stub, "obj", if_generation_match=v1.generation, start_offset=5000)
    assert got.data == data[5000:]
    raises(lambda: stub.Download(pb.DownloadRequest(object_id="obj",
                                                    if_generation_match=v1.generation + "x"),
                                 timeout=10),
           "FAILED_PRECONDITION", "GENERATION_MISMATCH")
    # The object changed: a resumed download pinned to v1 fails.
    put(stub, "obj", payload(SIZE, 2))
    raises(lambda: stub.Download(pb.DownloadRequest(object_id="obj", start_offset=5000,
                                                    if_generation_match=v1.generation),
                                 timeout=10),
           "FAILED_PRECONDITION", "GENERATION_MISMATCH")


def test_unknown_object_is_object_not_found(node, stub):
    raises(lambda: stub.Download(pb.DownloadRequest(object_id="missing"), timeout=10),
           "NOT_FOUND", "OBJECT_NOT_FOUND")
    put(stub, "obj", payload(10))
    stub.DeleteObject(pb.DeleteObjectRequest(object_id="obj"))
    raises(lambda: stub.Download(pb.DownloadRequest(object_id="obj"), timeout=10),
           "NOT_FOUND", "OBJECT_NOT_FOUND")


def test_download_of_an_invalid_name_is_invalid_name(node, stub):
    raises(lambda: stub.Download(pb.DownloadRequest(object_id="../x"), timeout=10),
           "INVALID_ARGUMENT", "INVALID_NAME")


@pytest.mark.parametrize("then", ["overwrite", "overwrite-and-delete"])
def test_download_in_progress_finishes_on_its_own_version(node, stub, then):
    # Big enough, in small chunks, that gRPC cannot have buffered it all before the overwrite.
    old = payload(8 * MiB, 1)
    v1 = put(stub, "obj", old).object
    stream = stub.Download(pb.DownloadRequest(object_id="obj", chunk_size=16 * KiB), timeout=60)
    first = next(stream)
    assert first.object == v1
    new = payload(8 * MiB, 2)
    v2 = put(stub, "obj", new).object
    if then == "overwrite-and-delete":
        stub.DeleteObject(pb.DeleteObjectRequest(object_id="obj"))
    rest = list(stream)
    got = first.data + b"".join(c.data for c in rest)
    assert len(got) == len(old)
    assert sha256_hex(got) == v1.sha256
    assert got == old
    if then == "overwrite":
        assert download_all(stub, "obj").data == new
        assert stat(stub, "obj") == v2


def test_load_100_concurrent_uploads_and_downloads(node_factory):
    node = node_factory(workers=2)
    channels = [grpc.insecure_channel(node.addr, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(8)]
    try:
        stubs = [oss_pb2_grpc.ObjectStorageStub(c) for c in channels]

        def one(i: int) -> str:
            stub = stubs[i % len(stubs)]
            data = payload(1000 + 997 * i, seed=1000 + i)
            s = create(stub, f"load-{i:03d}", data, file_name=f"f{i}.bin")
            resp = upload_data(stub, s.upload_id, data, 8 * KiB)
            assert resp.session.state == pb.UploadSession.COMMITTED
            assert resp.object.sha256 == sha256_hex(data)
            got = download_all(stubs[(i + 3) % len(stubs)], f"load-{i:03d}", chunk_size=16 * KiB)
            assert got.data == data and got.info.sha256 == sha256_hex(data)
            return resp.object.object_id

        with concurrent.futures.ThreadPoolExecutor(100) as pool:
            done = list(pool.map(one, range(100)))
        assert sorted(done) == [f"load-{i:03d}" for i in range(100)]
        listed = stubs[0].ListObjects(pb.ListObjectsRequest(page_size=1000), timeout=10).objects
        assert [o.object_id for o in listed] == sorted(done)
    finally:
        for c in channels:
            c.close()
