"""`mini-oss put` and `get` resume when run again (issue 11): real nodes, real CLI processes.

Each interruption (kill -9 of the CLI, SIGINT, a node restart) happens mid-transfer against a
node slowed by `--rate-limit-bytes`; the re-run must move no more than the rest plus one chunk
(counted by the node's /metrics) and end with the exact bytes. XDG_CACHE_HOME points at a temp
dir (conftest), inherited by the CLI processes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from node.client import Client

KiB = 1024
MiB = 1024 * KiB
SIZE = 3 * MiB
CHUNK = 64 * KiB
SLOW = dict(workers=1, metrics_listen="127.0.0.1:0", rate_limit_bytes="2M",
            rate_limit_burst=0.1, default_chunk_size="64K")


def metric(node, name: str) -> float:
    with urllib.request.urlopen(node.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def received(node) -> float:
    return metric(node, "mini_oss_received_bytes_total")


def sent(node) -> float:
    return metric(node, "mini_oss_sent_bytes_total")


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "node", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def run_cli(*args: str) -> tuple[int, str, str]:
    return finish(cli(*args))


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def make_file(path, size: int = SIZE) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def active_sessions(node) -> list:
    with Client(node.addr) as client:
        return list(client.list_sessions())


def put_upload(node, object_id: str, data: bytes) -> None:
    with Client(node.addr) as client:
        client.upload(io.BytesIO(data), object_id)


def interrupted_put(node, src, object_id: str, how: str) -> tuple[int, str]:
    """Start `mini-oss put`, let about a third arrive, interrupt it (`kill` = kill -9, `int` =
    SIGINT); returns (exit status, stderr)."""
    proc = cli("put", str(src), "--object-id", object_id, "--addr", node.addr)
    wait_until(lambda: received(node) >= MiB)
    proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGINT)
    code, _, err = finish(proc)
    return code, err


def resumed_offset(node, object_id: str) -> int:
    """The session's durable offset once the node has checkpointed the cut stream."""
    sessions = []

    def checkpointed() -> bool:
        sessions[:] = [s for s in active_sessions(node) if s.object_id == object_id]
        return bool(sessions) and sessions[0].uploaded_offset > 0

    wait_until(checkpointed)
    return sessions[0].uploaded_offset


def cut_upload(node_factory, tmp_path, object_id: str, **flags):
    """A node, a file, and its upload cut by kill -9 of the CLI once checkpointed mid-way."""
    node = node_factory(**SLOW, **flags)
    src = tmp_path / "photo.bin"
    data = make_file(src)
    interrupted_put(node, src, object_id, "kill")
    return node, src, data


def check_resumed_put(node, src, object_id: str, data: bytes) -> dict:
    offset = resumed_offset(node, object_id)
    before = received(node)
    code, out, err = run_cli("put", str(src), "--object-id", object_id, "--addr", node.addr,
                             "--json")
    moved = received(node) - before
    assert code == 0, err
    assert f"resuming {object_id} at" in err and "of 3.0 MiB" in err
    assert moved <= SIZE - offset + CHUNK, (moved, offset)
    info = json.loads(out)
    assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["size"] == SIZE
    with Client(node.addr) as client:
        got = io.BytesIO()
        client.download(object_id, got)
    assert got.getvalue() == data
    assert active_sessions(node) == []
    return {"offset": offset, "moved": moved, "saved": SIZE - moved}


# ------------------------------------------------------------------------------------------
# put


def test_put_resumes_after_kill_9(node_factory, tmp_path):
    node = node_factory(**SLOW)
    src = tmp_path / "photo.bin"
    data = make_file(src)
    code, _ = interrupted_put(node, src, "photo-1", "kill")
    assert code == -signal.SIGKILL
    figures = check_resumed_put(node, src, "photo-1", data)
    print("kill -9 mid-put:", figures)


def test_put_sigint_exits_130_says_how_to_continue_and_resumes(node_factory, tmp_path):
    node = node_factory(**SLOW)
    src = tmp_path / "photo.bin"
    data = make_file(src)
    code, err = interrupted_put(node, src, "photo-2", "int")
    assert code == 130, err
    assert err.startswith("mini-oss: interrupted at ") and err.count("\n") == 1
    assert "run the same command again to resume" in err
    figures = check_resumed_put(node, src, "photo-2", data)
    print("SIGINT mid-put:", figures)


def test_put_resumes_after_a_node_restart(node_factory, tmp_path):
    # Checkpoints every 256 KiB: a node killed -9 keeps what it had made durable by then.
    node = node_factory(checkpoint_bytes="256K", **SLOW)
    src = tmp_path / "photo.bin"
    data = make_file(src)
    proc = cli("put", str(src), "--object-id", "photo-3", "--addr", node.addr)
    wait_until(lambda: received(node) >= MiB)
    node.kill()  # kill -9 of the whole node; the CLI is left retrying
    proc.send_signal(signal.SIGKILL)  # the person gives up waiting
    finish(proc)
    # The same node comes back on the same address (the resume state is keyed by it).
    again = node_factory(data_dir=node.data_dir, listen=node.addr, checkpoint_bytes="256K",
                         **SLOW)
    assert again.addr == node.addr
    figures = check_resumed_put(again, src, "photo-3", data)
    print("node restart mid-put:", figures)


def test_put_of_a_changed_file_aborts_the_old_session_and_starts_afresh(node_factory, tmp_path):
    node, src, _ = cut_upload(node_factory, tmp_path, "photo-4")
    old = resumed_offset(node, "photo-4")
    old_id = active_sessions(node)[0].upload_id
    data = make_file(src)  # same size, other bytes
    code, out, err = run_cli("put", str(src), "--object-id", "photo-4", "--addr", node.addr,
                             "--json")
    assert code == 0, err
    assert f"changed since upload {old_id} began" in err and "uploading afresh" in err
    assert "resuming" not in err and old > 0
    assert json.loads(out)["sha256"] == hashlib.sha256(data).hexdigest()
    with Client(node.addr) as client:
        assert client.get_session(old_id).state == 3  # ABORTED: its bytes are freed
    assert active_sessions(node) == []


def test_put_after_the_session_was_aborted_drops_the_entry(node_factory, tmp_path):
    node, src, data = cut_upload(node_factory, tmp_path, "photo-5")
    resumed_offset(node, "photo-5")
    (session,) = active_sessions(node)
    code, out, err = run_cli("uploads", "--addr", node.addr)
    assert code == 0 and session.upload_id in out and "photo-5" in out and "of 3.0 MiB" in out
    code, out, _ = run_cli("uploads", "--addr", node.addr, "--json", "--prefix", "photo-")
    assert json.loads(out)["upload_id"] == session.upload_id
    assert run_cli("uploads", "--addr", node.addr, "--prefix", "other")[1] == ""
    code, out, err = run_cli("abort", session.upload_id, "--addr", node.addr)
    assert code == 0 and out == f"aborted {session.upload_id}\n"
    assert active_sessions(node) == []
    code, out, err = run_cli("put", str(src), "--object-id", "photo-5", "--addr", node.addr,
                             "--json")
    assert code == 0, err
    assert err == (f"mini-oss: upload {session.upload_id} of photo-5 was aborted or expired on "
                   f"the node: uploading afresh\n")
    assert json.loads(out)["sha256"] == hashlib.sha256(data).hexdigest()
    code, _, err = run_cli("abort", "no-such-upload", "--addr", node.addr)
    assert code == 1 and "NOT_FOUND SESSION_NOT_FOUND" in err


def test_put_after_the_session_expired_drops_the_entry(node_factory, tmp_path):
    node, src, data = cut_upload(node_factory, tmp_path, "photo-6", session_ttl=1,
                                 sweep_interval=0.2)
    wait_until(lambda: active_sessions(node) == [])  # expired by the sweep
    code, out, err = run_cli("put", str(src), "--object-id", "photo-6", "--addr", node.addr,
                             "--json")
    assert code == 0, err
    assert re.fullmatch(r"mini-oss: upload \S+ of photo-6 (was aborted or expired on the node|"
                        r"expired and the node forgot it): uploading afresh\n", err), err
    assert json.loads(out)["sha256"] == hashlib.sha256(data).hexdigest()


def test_put_no_resume_aborts_the_old_session(node_factory, tmp_path):
    node, src, data = cut_upload(node_factory, tmp_path, "photo-7")
    resumed_offset(node, "photo-7")
    (old,) = active_sessions(node)
    before = received(node)
    code, out, err = run_cli("put", str(src), "--object-id", "photo-7", "--addr", node.addr,
                             "--no-resume", "--quiet")
    assert code == 0 and out == "" and err == ""
    assert received(node) - before == SIZE
    with Client(node.addr) as client:
        assert client.get_session(old.upload_id).state == 3
        assert client.stat("photo-7").sha256 == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------
# get


def interrupted_get(node, object_id: str, dest, how: str) -> tuple[int, str]:
    partial = str(dest) + ".mini-oss-partial"
    proc = cli("get", object_id, "-o", str(dest), "--addr", node.addr)
    wait_until(lambda: os.path.exists(partial) and os.path.getsize(partial) >= MiB)
    proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGINT)
    code, _, err = finish(proc)
    assert not dest.exists() and os.path.getsize(partial) >= MiB
    return code, err


def check_resumed_get(node, object_id: str, dest, data: bytes) -> dict:
    partial = str(dest) + ".mini-oss-partial"
    kept = os.path.getsize(partial)
    before = sent(node)
    code, out, err = run_cli("get", object_id, "-o", str(dest), "--addr", node.addr)
    moved = sent(node) - before
    assert code == 0, err
    assert f"resuming {object_id} at" in err and "of 3.0 MiB" in err
    assert moved <= SIZE - kept + CHUNK, (moved, kept)
    assert dest.read_bytes() == data and not os.path.exists(partial)
    return {"kept": kept, "moved": moved, "saved": SIZE - moved}


@pytest.mark.parametrize("how", ["kill", "int"])
def test_get_resumes_after_an_interruption(node_factory, tmp_path, how):
    node = node_factory(**SLOW)
    data = os.urandom(SIZE)
    put_upload(node, "video-1", data)
    dest = tmp_path / "video.bin"
    code, err = interrupted_get(node, "video-1", dest, how)
    if how == "int":
        assert code == 130 and err.startswith("mini-oss: interrupted at ")
        assert "run the same command again to resume" in err
    else:
        assert code == -signal.SIGKILL
    figures = check_resumed_get(node, "video-1", dest, data)
    print(f"{how} mid-get:", figures)


def test_get_of_an_overwritten_object_starts_over(node_factory, tmp_path):
    node = node_factory(**SLOW)
    put_upload(node, "video-2", os.urandom(SIZE))
    dest = tmp_path / "video.bin"
    interrupted_get(node, "video-2", dest, "kill")
    data = os.urandom(SIZE)
    put_upload(node, "video-2", data)
    code, out, err = run_cli("get", "video-2", "-o", str(dest), "--addr", node.addr)
    assert code == 0, err
    assert err == "mini-oss: video-2 changed since the interrupted download: starting over\n"
    assert dest.read_bytes() == data
    assert not os.path.exists(str(dest) + ".mini-oss-partial")


def test_get_of_a_tampered_partial_file_fails_and_starts_over_next_time(node_factory, tmp_path):
    node = node_factory(**SLOW)
    data = os.urandom(SIZE)
    put_upload(node, "video-3", data)
    dest = tmp_path / "video.bin"
    interrupted_get(node, "video-3", dest, "kill")
    partial = str(dest) + ".mini-oss-partial"
    with open(partial, "r+b") as f:
        f.write(b"\0" * 100)
    code, _, err = run_cli("get", "video-3", "-o", str(dest), "--addr", node.addr)
    assert code == 1 and "DATA_LOSS SHA256_MISMATCH" in err and "run again" in err
    assert not dest.exists() and not os.path.exists(partial)
    code, _, err = run_cli("get", "video-3", "-o", str(dest), "--addr", node.addr, "--quiet")
    assert code == 0 and err == "" and dest.read_bytes() == data


def test_help_documents_exit_statuses_and_flags():
    code, out, _ = run_cli("put", "--help")
    assert code == 0
    for text in ("--no-resume", "--quiet", "--no-progress", "130", "usage error"):
        assert text in " ".join(out.split())
    code, out, _ = run_cli("--help")
    assert "uploads" in out and "abort" in out and "130" in out


def test_put_after_its_session_committed_sends_nothing_unless_the_object_changed(node_factory, tmp_path):
    """The earlier run committed but died before forgetting its entry: if that version is still
    the object's current one, the re-run sends nothing; if it was replaced, it uploads afresh."""
    node, src, data = cut_upload(node_factory, tmp_path, "photo-9")
    resumed_offset(node, "photo-9")
    (session,) = active_sessions(node)
    with Client(node.addr) as client:  # finish it behind the CLI's back
        client.upload(io.BytesIO(data), "photo-9", upload_id=session.upload_id)
    before = received(node)
    code, out, err = run_cli("put", str(src), "--object-id", "photo-9", "--addr", node.addr, "--json")
    assert code == 0, err
    assert err == f"mini-oss: upload {session.upload_id} had already committed photo-9: nothing to send\n"
    assert json.loads(out)["generation"] == session.upload_id
    assert received(node) == before, "bytes were sent again"


def test_put_after_its_committed_version_was_replaced_uploads_afresh(node_factory, tmp_path):
    node, src, data = cut_upload(node_factory, tmp_path, "photo-11")
    resumed_offset(node, "photo-11")
    (session,) = active_sessions(node)
    with Client(node.addr) as client:
        client.upload(io.BytesIO(data), "photo-11", upload_id=session.upload_id)
    put_upload(node, "photo-11", b"somebody else's bytes")
    code, out, err = run_cli("put", str(src), "--object-id", "photo-11", "--addr", node.addr, "--json")
    assert code == 0, err
    assert err == (f"mini-oss: upload {session.upload_id} had committed photo-11, which has changed "
                   f"since: uploading afresh\n")
    info = json.loads(out)
    assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["generation"] != session.upload_id
