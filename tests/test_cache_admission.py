"""Downloads fill the page cache from a range's second read on (node.cache_admission): the
rule itself, and a real node whose object files are watched with cachestat."""

from __future__ import annotations

import os

import pytest

from node import page_cache
from node.cache_admission import SecondRead
from tests.contract import MiB, download_all, payload, put

# -- the rule ---------------------------------------------------------------------------------


def test_a_range_is_admitted_on_its_second_read():
    reads = SecondRead()
    assert not reads.seen_before("v1", 0)
    assert reads.seen_before("v1", 0)
    assert reads.seen_before("v1", 0)


def test_another_start_or_another_version_is_a_first_read():
    reads = SecondRead()
    reads.seen_before("v1", 0)
    assert not reads.seen_before("v1", 4096)
    assert not reads.seen_before("v2", 0)


def test_the_least_recently_read_is_forgotten_first():
    reads = SecondRead(capacity=2)
    reads.seen_before("a", 0)
    reads.seen_before("b", 0)
    assert reads.seen_before("a", 0)       # a is now the most recent
    reads.seen_before("c", 0)              # b goes
    assert reads.seen_before("a", 0)
    assert not reads.seen_before("b", 0)


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        SecondRead(capacity=0)


# -- a real node ------------------------------------------------------------------------------


def test_an_object_is_cached_from_its_second_download_on_and_a_first_read_stays_around_it(node_factory):
    # One worker: each worker remembers its own reads, and both downloads must meet the same.
    node = node_factory(workers=1)
    stub = node.stub()
    data = payload(3 * MiB + 5)
    put(stub, "hot", data)
    fd = os.open(os.path.realpath(node.data_dir / "index" / "hot"), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert page_cache.cached_pages(fd, 0, len(data)) == 0, "this kernel keeps the pages: no cold case"
        assert download_all(stub, "hot").data == data
        assert page_cache.cached_pages(fd, 0, len(data)) == 0, "a first download filled the page cache"
        assert download_all(stub, "hot").data == data
        assert page_cache.fully_cached(fd, 0, len(data)), "a second download left the object uncached"
        # Evicted, it is read through the cache again; a range never read before goes around it.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert download_all(stub, "hot", start_offset=MiB).data == data[MiB:]
        assert page_cache.cached_pages(fd, MiB, len(data) - MiB) == 0, "a first range read filled the cache"
        assert download_all(stub, "hot").data == data
        assert page_cache.fully_cached(fd, 0, len(data)), "a repeated download was not cached again"
    finally:
        os.close(fd)
