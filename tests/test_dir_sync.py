"""node.dir_sync: a shared directory fsync still begins after every caller it answers, one
fsync serves everyone who arrived while the last one ran, and a failed fsync answers nobody."""

from __future__ import annotations

import threading

import pytest

from node.dir_sync import SharedDirSync, fsync_dir


class GatedFsync:
    """An fsync stand-in that records when each call begins and blocks until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.began = threading.Semaphore(0)
        self.gates: list[threading.Event] = []
        self.fail: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self, path: str) -> None:
        with self._lock:
            self.calls += 1
            number = self.calls
            gate = threading.Event()
            self.gates.append(gate)
        self.began.release()
        assert gate.wait(10)
        if number in self.fail:
            raise OSError(5, "Input/output error")

    def release(self, number: int) -> None:
        self.gates[number - 1].set()


def start(target) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run():
        try:
            target()
            outcome.append("ok")
        except OSError as exc:
            outcome.append(exc)
    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_callers_during_an_fsync_wait_for_the_next_and_share_it():
    fsync = GatedFsync()
    shared = SharedDirSync("/unused", fsync)
    first, first_out = start(shared.sync)
    assert fsync.began.acquire(timeout=10)            # fsync 1 runs for the first caller
    later = [start(shared.sync) for _ in range(5)]    # they arrive while it runs
    fsync.release(1)
    first.join(10)
    assert first_out == ["ok"]
    assert fsync.began.acquire(timeout=10)            # fsync 2 begins after they called...
    assert all(out == [] for _, out in later)         # ...and none of them returned before it
    fsync.release(2)
    for thread, out in later:
        thread.join(10)
        assert out == ["ok"]
    assert fsync.calls == 2                           # one fsync served all five


def test_a_failed_fsync_answers_nobody_and_a_waiter_runs_its_own():
    fsync = GatedFsync()
    fsync.fail = {2}
    shared = SharedDirSync("/unused", fsync)
    first, first_out = start(shared.sync)
    assert fsync.began.acquire(timeout=10)
    waiting = [start(shared.sync) for _ in range(2)]  # both need fsync 2
    fsync.release(1)
    first.join(10)
    assert fsync.began.acquire(timeout=10)            # one of them runs fsync 2...
    fsync.release(2)                                  # ...which fails
    assert fsync.began.acquire(timeout=10)            # the other is not answered: it runs fsync 3
    fsync.release(3)
    for thread, _ in waiting:
        thread.join(10)
    outcomes = sorted((out[0] for _, out in waiting), key=lambda o: o == "ok")
    assert isinstance(outcomes[0], OSError) and outcomes[1] == "ok"
    assert fsync.calls == 3


def test_a_real_directory_is_synced(tmp_path):
    (tmp_path / "entry").write_bytes(b"x")
    SharedDirSync(str(tmp_path)).sync()
    fsync_dir(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        SharedDirSync(str(tmp_path / "missing")).sync()
