"""Listings return exactly the rows under their prefix, in pages that fit any client.

Trust first, findings 1 and 8: the catalog's prefix bound was dropped for a last character of
U+10FFFF (the listing ran to the end of the table) and became a lone surrogate after U+D7FF
(INTERNAL); a page of objects with 8 KiB of metadata each passed gRPC's message limit.
"""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from node import ranges
from node.catalog.records import prefix_upper_bound as _prefix_upper_bound
from node.catalog.records import prefix_range as _prefix_range
from node.client import Client
from node.names import MAX_METADATA_BYTES, is_object_id_prefix

ID_CHARS = "abcXYZ09._-"


@settings(max_examples=500)
@given(prefix=st.text(min_size=1, max_size=6), other=st.text(max_size=8))
def test_the_prefix_bound_selects_exactly_the_strings_that_start_with_the_prefix(prefix, other):
    upper = _prefix_upper_bound(prefix)
    if upper is not None:
        upper.encode("utf-8")  # never a lone surrogate: SQLite could not take it
    for candidate in (prefix + other, other, prefix[:-1] + other):
        try:
            candidate.encode("utf-8")
        except UnicodeEncodeError:
            continue
        inside = candidate >= prefix and (upper is None or candidate < upper)
        assert inside == candidate.startswith(prefix), (prefix, candidate, upper)


def test_the_prefix_bound_of_the_largest_characters():
    assert _prefix_upper_bound("team-a-\U0010FFFF") == "team-a."
    assert _prefix_upper_bound("ab\U0010FFFF\U0010FFFF") == "ac"
    assert _prefix_upper_bound("a\ud7ff") == "a\ue000"
    assert _prefix_upper_bound("\U0010FFFF") is None
    assert _prefix_range("team-a-\U0010FFFF") == ("object_id >= ? AND object_id < ?",
                                                  ["team-a-\U0010FFFF", "team-a."])


@given(st.text(max_size=10))
def test_only_prefixes_of_the_object_id_alphabet_can_list_anything(prefix):
    assert is_object_id_prefix(prefix) == all(c in
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-" for c in prefix)


@given(sizes=st.lists(st.integers(1, 5000), max_size=50), limit=st.integers(1, 60),
       budget=st.integers(1, 20000))
def test_a_page_is_cut_by_count_and_bytes_but_always_moves_forward(sizes, limit, budget):
    n = ranges.cut_page(sizes, limit, budget, lambda s: s)
    assert n <= min(len(sizes), limit)
    if sizes:
        assert n >= 1
        assert n == 1 or sum(sizes[:n]) <= budget
        if n < min(len(sizes), limit):
            assert sum(sizes[:n + 1]) > budget


def test_a_full_page_of_objects_with_the_largest_metadata_fits_the_message_limit(node_factory):
    node = node_factory(workers=1)
    # 8 KiB of metadata each (the most allowed): 1000 of them would be ~8 MiB in one message.
    metadata = {"k": "v" * (MAX_METADATA_BYTES - 1)}
    count = 600
    with Client(node.addr) as client:
        for i in range(count):
            client.upload(io.BytesIO(b""), f"big-{i:04d}", metadata=metadata)
        page = client._unary("ListObjects", _request(prefix="big-", page_size=1000))
        assert 0 < len(page.objects) < count and page.next_page_token, \
            "a page over the byte budget must be cut and continued"
        assert page.ByteSize() < 4 * 1024 * 1024  # a stock client's receive limit
        listed = [o.object_id for o in client.list_objects(prefix="big-", page_size=1000)]
        assert listed == [f"big-{i:04d}" for i in range(count)]
        assert all(o.metadata == metadata for o in client.list_objects(prefix="big-", page_size=1000))


def _request(**fields):
    from node.pb import oss_pb2
    return oss_pb2.ListObjectsRequest(**fields)
