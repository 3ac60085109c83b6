"""`mini-oss get --parallel N` and `Client.download(..., parallel=N)`: one object over several
Download streams into one file (issue 11, item 5). Real nodes, real CLI processes.

The CLI tests share one node per test process, slowed by `--rate-limit-bytes` (4 MiB/s for
the whole client) so that a `get` can be interrupted mid-transfer; each uses its own object.
What a run saved is read from its resume entry (node.transfers.transfer_state, in the per-test
XDG_CACHE_HOME that the CLI processes inherit); what the node sent, from its /metrics.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal

import pytest

from conftest import RunningNode, stop_all
from node import errors
from node.client import Client
from node.transfers.progress import human_size
from node.transfers.transfer_state import DOWNLOAD, StateStore
from test_resume_cli import cli, finish, metric, put_upload, run_cli, sent, wait_until

KiB = 1024
MiB = 1024 * KiB
SIZE = 4 * MiB
CHUNK = 64 * KiB
STREAMS = 4  # 4 MiB cut on 1 MiB boundaries: four ranges of 1 MiB
# One call at a time per connection: a parallel get's streams each have their own connection
# anyway, and a client with one connection gets its ranges one after another (the last test).
SLOW = dict(workers=1, metrics_listen="127.0.0.1:0", rate_limit_bytes="4M",
            rate_limit_burst=0.1, default_chunk_size="64K", max_streams_per_connection=1)


@pytest.fixture(scope="module")
def slow_node(tmp_path_factory):
    node = RunningNode(tmp_path_factory.mktemp("pget-node"), dict(SLOW)).start()
    yield node
    stop_all([node])


def entry_ranges(node, object_id: str, dest) -> list[tuple[int, int, int]] | None:
    """The ranges the CLI's resume entry says are done, or None without an entry."""
    entry = StateStore().load(DOWNLOAD, node.addr, object_id, str(dest))
    return None if entry is None else list(entry.ranges)


def kept(ranges) -> int:
    return sum(done for _start, _end, done in ranges)


def get(node, object_id: str, dest, *more: str):
    return cli("get", object_id, "-o", str(dest), "--addr", node.addr, "--parallel",
               str(STREAMS), *more)


def quiet(node) -> None:
    """Wait until the node has no stream left (a killed client's are ended by the node), so
    that /metrics counts only what the next run asks for."""
    wait_until(lambda: metric(node, "mini_oss_active_streams") == 0)


def interrupted_get(node, object_id: str, dest, how: str = "kill") -> tuple[int, str, list]:
    """Start a parallel get, wait until its entry says every range has bytes and 1 MiB is
    saved in all, interrupt it; (exit status, stderr, the ranges saved)."""
    proc = get(node, object_id, dest)

    def progressed() -> bool:
        ranges = entry_ranges(node, object_id, dest)
        return bool(ranges) and all(done for *_, done in ranges) and kept(ranges) >= MiB

    wait_until(progressed)
    proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGINT)
    code, _, err = finish(proc)
    ranges = entry_ranges(node, object_id, dest)
    assert len(ranges) == STREAMS and kept(ranges) >= MiB
    assert not dest.exists() and os.path.getsize(str(dest) + ".mini-oss-partial") == SIZE
    quiet(node)
    return code, err, ranges


# ------------------------------------------------------------------------------------------
# the command line


def test_parallel_get_gives_exact_bytes_and_the_node_sends_them_once(slow_node, tmp_path):
    data = os.urandom(SIZE)
    put_upload(slow_node, "pget-1", data)
    dest = tmp_path / "one.bin"
    quiet(slow_node)
    before = sent(slow_node)
    code, out, err = finish(get(slow_node, "pget-1", dest))
    assert code == 0, err
    assert out == f"downloaded pget-1 to {dest}\n" and err == ""
    assert dest.read_bytes() == data
    assert sent(slow_node) - before == SIZE  # every range once, none twice
    assert not os.path.exists(str(dest) + ".mini-oss-partial")
    assert entry_ranges(slow_node, "pget-1", dest) is None  # forgotten once done


@pytest.mark.parametrize("how", ["kill", "int"])
def test_parallel_get_resumes_each_range_after_an_interruption(slow_node, tmp_path, how):
    data = os.urandom(SIZE)
    object_id = f"pget-2-{how}"
    put_upload(slow_node, object_id, data)
    dest = tmp_path / "two.bin"
    code, err, ranges = interrupted_get(slow_node, object_id, dest, how)
    if how == "int":  # Ctrl-C: every range thread stopped, the state saved, the hint given
        assert code == 130, err
        assert err.startswith("mini-oss: interrupted at ") and err.count("\n") == 1
        assert "run the same command again to resume" in err
    else:
        assert code == -signal.SIGKILL
    before = sent(slow_node)
    code, out, err = finish(get(slow_node, object_id, dest))
    moved = sent(slow_node) - before
    assert code == 0, err
    assert err == (f"mini-oss: resuming {object_id} at {human_size(kept(ranges))} of "
                   f"{human_size(SIZE)}\n")
    assert moved <= SIZE - kept(ranges) + STREAMS * CHUNK, (moved, ranges)
    assert dest.read_bytes() == data
    assert not os.path.exists(str(dest) + ".mini-oss-partial")
    print(f"{how} mid-get: kept {kept(ranges)}, moved {moved} of {SIZE}")


def test_parallel_get_of_an_overwritten_object_starts_over(slow_node, tmp_path):
    put_upload(slow_node, "pget-3", os.urandom(SIZE))
    dest = tmp_path / "three.bin"
    interrupted_get(slow_node, "pget-3", dest)
    data = os.urandom(SIZE)
    put_upload(slow_node, "pget-3", data)
    code, _, err = finish(get(slow_node, "pget-3", dest))
    assert code == 0, err
    assert err == "mini-oss: pget-3 changed since the interrupted download: starting over\n"
    assert dest.read_bytes() == data
    assert not os.path.exists(str(dest) + ".mini-oss-partial")


def test_parallel_get_of_a_corrupted_partial_file_fails_its_sha256_and_starts_over_next_time(
        slow_node, tmp_path):
    data = os.urandom(SIZE)
    put_upload(slow_node, "pget-4", data)
    dest = tmp_path / "four.bin"
    partial = str(dest) + ".mini-oss-partial"
    _, _, ranges = interrupted_get(slow_node, "pget-4", dest)
    start, _end, done = ranges[1]  # bytes this range had fetched: the re-run keeps them
    with open(partial, "r+b") as f:
        f.seek(start)
        flipped = bytes(b ^ 0xFF for b in f.read(min(done, 100)))
        f.seek(start)
        f.write(flipped)
    code, _, err = finish(get(slow_node, "pget-4", dest))
    assert code == 1
    assert "resuming pget-4 at" in err
    assert "DATA_LOSS SHA256_MISMATCH" in err and "run again" in err
    assert not dest.exists() and not os.path.exists(partial)  # nothing wrong is placed
    assert entry_ranges(slow_node, "pget-4", dest) is None
    code, _, err = finish(get(slow_node, "pget-4", dest, "--quiet"))
    assert code == 0 and err == "" and dest.read_bytes() == data


def test_a_one_stream_runs_partial_file_is_continued_by_a_parallel_run(slow_node, tmp_path):
    """The entry a `--parallel 1` run left (version 1, a prefix) is read by a parallel re-run:
    the prefix is kept as one finished range, the rest is cut into ranges."""
    data = os.urandom(SIZE)
    put_upload(slow_node, "pget-7", data)
    dest = tmp_path / "seven.bin"
    partial = str(dest) + ".mini-oss-partial"
    proc = cli("get", "pget-7", "-o", str(dest), "--addr", slow_node.addr, "--parallel", "1")
    wait_until(lambda: os.path.exists(partial) and os.path.getsize(partial) >= MiB)
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    assert entry_ranges(slow_node, "pget-7", dest) == []  # a one-stream entry
    prefix = os.path.getsize(partial)
    quiet(slow_node)
    before = sent(slow_node)
    code, _, err = finish(get(slow_node, "pget-7", dest))
    moved = sent(slow_node) - before
    assert code == 0, err
    assert err == f"mini-oss: resuming pget-7 at {human_size(prefix)} of {human_size(SIZE)}\n"
    assert moved == SIZE - prefix
    assert dest.read_bytes() == data


def test_parallel_flag_is_documented_and_checked():
    code, out, _ = run_cli("get", "--help")
    assert code == 0 and "--parallel N" in out and "64 MiB" in " ".join(out.split())
    code, _, err = run_cli("get", "x", "--parallel", "0")
    assert code == 2 and "invalid stream count '0'" in err


# ------------------------------------------------------------------------------------------
# the library


def test_library_parallel_download_gives_exact_bytes(slow_node, tmp_path):
    data = os.urandom(3 * MiB + 12345)  # the last range ends mid-chunk
    put_upload(slow_node, "pget-5", data)
    dest = tmp_path / "five.bin"
    with Client(slow_node.addr, channels=3) as client:
        info = client.download("pget-5", dest, parallel=3)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert dest.read_bytes() == data
    assert os.listdir(tmp_path) == ["five.bin"]  # no temporary file left


def test_library_parallel_download_of_an_object_replaced_meanwhile_never_mixes_versions(
        slow_node, tmp_path):
    # One call at a time per connection, and the client has one: its ranges go one after
    # another. The first progress report (range 0 under way) replaces the object over another
    # connection, so range 1 starts after the replacement and must be refused.
    node = slow_node
    put_upload(node, "pget-6", os.urandom(6 * MiB))  # range 0 (2 MiB) takes half a second
    replaced = []

    def replace_once(done: int, total: int) -> None:
        if done and not replaced:
            # A private subchannel pool: a connection of its own, not queued behind the ranges.
            with Client(node.addr, options=(("grpc.use_local_subchannel_pool", 1),)) as other:
                other.upload(io.BytesIO(b"the new version"), "pget-6")
            replaced.append(done)

    out = tmp_path / "out"
    out.mkdir()
    with Client(node.addr) as client:
        with pytest.raises(errors.GenerationMismatch):
            client.download("pget-6", out / "six.bin", parallel=3, progress=replace_once)
    assert replaced and replaced[0] < 2 * MiB  # replaced while the first range was running
    assert os.listdir(out) == []  # nothing at the path, no temporary file
