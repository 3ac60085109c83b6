"""The arithmetic of a parallel download (node.transfers.parallel_plan): ranges, defaults, bookkeeping."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.transfers.parallel_plan import (ALIGN, AUTO_MIN_SIZE, SAVE_BYTES, SAVE_SECONDS, Tally,
                                after_prefix, auto_streams, save_step, split, valid)

MiB = 1024 * 1024


@given(st.integers(0, 2**40), st.integers(0, 2**34), st.integers(1, 64),
       st.sampled_from([0, 64 * 1024, MiB, 4 * MiB]))
def test_split_covers_the_span_in_aligned_pieces(start, length, n, chunk):
    end = start + length
    ranges = split(start, end, n, chunk)
    assert valid(((0, start, start),) + ranges, end) if start else valid(ranges, end)
    assert 1 <= len(ranges) <= n and all(done == 0 for *_, done in ranges)
    align = max(ALIGN, chunk)
    assert all(a % align == 0 for a, _, _ in ranges[1:])  # every cut on a boundary
    inner = len(range(start // align + 1, -(-end // align)))
    assert len(ranges) == min(n, inner + 1)  # as many as asked, when there is room
    if len(ranges) > 2:  # evenly: whole pieces apart by at most one (ends may be partial)
        middle = [(b - a) // align for a, b, _ in ranges[1:-1]]
        assert max(middle) - min(middle) <= 1


def test_split_examples():
    assert split(0, 4 * MiB, 4) == tuple((i * MiB, (i + 1) * MiB, 0) for i in range(4))
    assert split(0, 3 * MiB + 5, 3) == ((0, MiB, 0), (MiB, 2 * MiB, 0), (2 * MiB, 3 * MiB + 5, 0))
    assert split(0, MiB, 8) == ((0, MiB, 0),)  # too small to cut
    assert split(0, 0, 4) == ((0, 0, 0),)
    assert split(0, 256 * MiB, 3) == ((0, 85 * MiB, 0), (85 * MiB, 170 * MiB, 0),
                                      (170 * MiB, 256 * MiB, 0))
    with pytest.raises(ValueError):
        split(0, 10, 0)


def test_after_prefix_keeps_a_one_stream_prefix_as_a_finished_range():
    assert after_prefix(4 * MiB, 100, 3) == ((0, 100, 100), (100, MiB, 0), (MiB, 2 * MiB, 0),
                                              (2 * MiB, 4 * MiB, 0))
    assert after_prefix(4 * MiB, 0, 2) == split(0, 4 * MiB, 2)


@pytest.mark.parametrize("ranges, size, ok", [
    (((0, 5, 5), (5, 10, 0)), 10, True),
    (((0, 5, 5), (6, 10, 0)), 10, False),       # a gap
    (((0, 5, 6), (5, 10, 0)), 10, False),       # done past the end
    (((0, 5, -1), (5, 10, 0)), 10, False),
    (((0, 5, 5),), 10, False),                  # short of the size
    ((), 0, False),
    (((0, 5),), 5, False),
    (((0, 5, "5"),), 5, False),
])
def test_valid(ranges, size, ok):
    assert valid(ranges, size) is ok


def test_auto_streams_asks_the_node_only_for_big_objects():
    def never() -> int:
        raise AssertionError("asked the node for a small object")

    assert auto_streams(AUTO_MIN_SIZE - 1, never) == 1
    assert auto_streams(AUTO_MIN_SIZE, lambda: 1) == 2
    assert auto_streams(AUTO_MIN_SIZE, lambda: 4) == 4
    assert auto_streams(10 * AUTO_MIN_SIZE, lambda: 32) == 8


def test_save_step():
    assert save_step(1024 * MiB) == SAVE_BYTES
    assert save_step(MiB) == MiB // 8
    assert save_step(3) == 1


def test_tally_counts_and_says_when_to_save():
    tally = Tally(((0, MiB, 0), (MiB, 2 * MiB, MiB // 2)), now=0.0)
    assert tally.size == 2 * MiB and tally.done() == MiB // 2 and tally.unfinished() == [0, 1]
    tally.add(0, MiB // 8 - 1)
    assert tally.checkpoint(now=0.5) is None           # not a step yet, not long enough
    tally.add(0, 1)
    saved = tally.checkpoint(now=0.6)                  # range 0 moved one step
    assert saved == ((0, MiB, MiB // 8), (MiB, 2 * MiB, MiB // 2))
    assert tally.checkpoint(now=0.7) is None           # nothing moved since
    tally.add(1, 1)
    assert tally.checkpoint(now=0.6 + SAVE_SECONDS - 0.01) is None
    assert tally.checkpoint(now=0.6 + SAVE_SECONDS) == tally.snapshot()  # time's up
    tally.add(1, MiB // 2 - 1)
    assert tally.unfinished() == [0] and tally.range(1) == (MiB, 2 * MiB, MiB)
    with pytest.raises(ValueError):
        tally.add(1, 1)                                # never past a range's end


def test_tally_adds_from_many_threads():
    tally = Tally([(i * 1000, (i + 1) * 1000, 0) for i in range(4)])

    def fill(index: int) -> None:
        for _ in range(1000):
            tally.add(index, 1)

    threads = [threading.Thread(target=fill, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tally.done() == 4000 and tally.unfinished() == []
