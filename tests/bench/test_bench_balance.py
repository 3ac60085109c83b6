"""The bench deals streams evenly over the workers its connections reached (tools.bench.driver)."""

from __future__ import annotations

import collections
from types import SimpleNamespace

import pytest

from tools.bench.driver import balanced


def channels(workers_of_connections: list[int], addr: str = "a:1") -> list[SimpleNamespace]:
    return [SimpleNamespace(addr=addr, worker_id=w, id=i) for i, w in enumerate(workers_of_connections)]


def dealt(order, streams: int) -> collections.Counter:
    return collections.Counter((order[i % len(order)].addr, order[i % len(order)].worker_id)
                               for i in range(streams))


@pytest.mark.parametrize("landing", [[0, 0, 0, 0, 0, 0, 1, 1], [1, 0, 0, 0], [0, 1] * 4, [0] * 8, [2, 0, 1, 1, 1]])
@pytest.mark.parametrize("streams", [1, 7, 50, 100])
def test_every_worker_reached_gets_the_same_share_of_streams(landing, streams):
    order = balanced(channels(landing))
    per_worker = dealt(order, streams)
    reached = len(set(landing))
    if streams >= reached:
        assert len(per_worker) == reached
    assert max(per_worker.values()) - min(per_worker.values()) <= 1


def test_each_workers_connections_take_turns():
    chans = channels([0, 0, 0, 1])
    order = balanced(chans)
    per_channel = collections.Counter(order[i % len(order)].id for i in range(60))
    assert per_channel == {0: 10, 1: 10, 2: 10, 3: 30}


def test_workers_of_different_nodes_are_different_workers():
    chans = channels([0, 0, 0]) + channels([0], addr="b:2")
    per_worker = dealt(balanced(chans), 10)
    assert per_worker == {("a:1", 0): 5, ("b:2", 0): 5}
