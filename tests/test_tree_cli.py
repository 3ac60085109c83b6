"""`mini-oss put -r DIR` and `get -r PREFIX DIR`: whole trees, against real nodes and real CLI
processes (node.transfers.tree, node.transfers.tree_run).

One node serves most tests (module-scoped; each test its own prefix, files of a few KiB);
the interruption tests share a second one slowed by --rate-limit-bytes. Bytes moved are counted
by the node's /metrics, as in test_resume_cli.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import re
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import RunningNode, stop_all
from node import errors
from node.cli import main
from node.client import SMALL_PUT_MAX, Client
from node.transfers.progress import human_size
from node.transfers.tree import Failure, Tally, UnsafePath, object_id_for, relative_path_for, walk
from test_resume_cli import (CHUNK, SLOW, active_sessions, cli, finish, received, run_cli,
                             sent, wait_until)

KiB = 1024
SUMMARY_TIME = r" in \d+\.\ds\n"


@pytest.fixture(scope="module")
def tree_node(tmp_path_factory):
    node = RunningNode(tmp_path_factory.mktemp("tree-node"),
                       {"workers": 1, "metrics_listen": "127.0.0.1:0", "max_object_size": "64K"})
    node.start()
    yield node
    stop_all([node])


@pytest.fixture(scope="module")
def slow_node(tmp_path_factory):
    node = RunningNode(tmp_path_factory.mktemp("slow-tree-node"), dict(SLOW))
    node.start()
    yield node
    stop_all([node])


def make_tree(root: pathlib.Path, count: int, sizes=(1 * KiB, 6 * KiB)) -> dict[str, bytes]:
    """`count` files in nested directories, with spaces, non-ASCII names and a dot-file;
    returns {relative path: bytes}."""
    special = ["read me.txt", "données/été 2024/résumé ü.txt", "日本語/ファイル.bin", ".hidden",
               "a_b/under_score-1.txt"]
    names = special + [f"d{i % 4}/sub{i % 3}/deeper/file-{i:03d}.bin"
                       for i in range(count - len(special))]
    files = {}
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        files[name] = os.urandom(sizes[0] + (i * 997) % (sizes[1] - sizes[0]))
        path.write_bytes(files[name])
    return files


def read_tree(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def put_r(node, src, prefix: str, *extra: str) -> tuple[int, str, str]:
    return run_cli("put", "-r", str(src), "--prefix", prefix, "--addr", node.addr, *extra)


def get_r(node, prefix: str, dest, *extra: str) -> tuple[int, str, str]:
    return run_cli("get", "-r", prefix, str(dest), "--addr", node.addr, *extra)


# ------------------------------------------------------------------------------------------
# Object ids <-> paths (pure)


@pytest.mark.parametrize("path, object_id", [
    ("docs/read me.txt", "b-docs_2Fread_20me.txt"),
    ("a_b/c-d.tar.gz", "b-a__b_2Fc-d.tar.gz"),
    ("été", "b-_C3_A9t_C3_A9"),
    (".bashrc", "b-.bashrc"),
])
def test_object_ids_escape_the_path_and_come_back(path, object_id):
    assert object_id_for("b-", path) == object_id
    assert relative_path_for("b-", object_id) == path


def test_without_a_prefix_a_leading_dot_is_escaped():
    assert object_id_for("", ".hidden/x") == "_2Ehidden_2Fx"
    assert relative_path_for("", "_2Ehidden_2Fx") == ".hidden/x"


def test_a_path_too_long_for_an_object_id_is_that_files_error():
    with pytest.raises(errors.InvalidName, match="cannot be an object id"):
        object_id_for("p-", "x" * 200)


_segment = st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp"),
                                 blacklist_characters="/"), min_size=1, max_size=12).filter(
    lambda s: s not in (".", ".."))


@given(st.lists(_segment, min_size=1, max_size=4))
def test_every_path_that_fits_comes_back_unchanged(segments):
    path = "/".join(segments)
    try:
        object_id = object_id_for("p-", path)
    except errors.InvalidName:
        return  # too long: put -r reports it for that file
    assert relative_path_for("p-", object_id) == path


@pytest.mark.parametrize("object_id", [
    "h-..", "h-.._2Fx", "h-a_2F.._2F.._2Fx", "h-_2Fetc_2Fpasswd", "h-", "h-a_2F_2Fb",
    "h-a_2F", "h-_2E_2E_2Fx", "h-../x", "h-a/../../x", "other-x", "h-x.mini-oss-partial",
])
def test_hostile_ids_name_no_path_outside_the_directory(object_id):
    with pytest.raises(UnsafePath):
        relative_path_for("h-", object_id)


def test_control_characters_become_underscores():
    assert relative_path_for("h-", "h-a_0Ab_1B_5Bc") == "a_b_[c"
    assert relative_path_for("h-", "h-img_1.jpg") == "img_1.jpg"  # not an escape: as it is


def test_summary_line_and_json():
    tally = Tally("put", files=200, moved=198, moved_bytes=1258291, unchanged=1,
                  failures=[Failure("big.bin", "p-big.bin", "RESOURCE_EXHAUSTED TOO_LARGE: x")])
    assert tally.summary_line(3.42) == ("put -r: 200 files, 198 uploaded (1.2 MiB), "
                                        "1 skipped (unchanged), 1 failed in 3.4s")
    data = tally.to_dict(3.42)
    assert (data["uploaded"], data["failed"], data["unchanged"]) == (198, 1, 1)
    assert data["failures"] == [{"path": "big.bin", "object_id": "p-big.bin",
                                 "error": "RESOURCE_EXHAUSTED TOO_LARGE: x"}]


def test_walk_follows_links_to_files_and_names_what_it_leaves_out(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_bytes(b"12345")
    (tmp_path / "x.mini-oss-partial").write_bytes(b"half")
    os.symlink(tmp_path / "d", tmp_path / "to-dir")
    os.symlink(tmp_path / "d" / "e" / "f", tmp_path / "to-file")
    os.symlink(tmp_path / "gone", tmp_path / "broken")
    os.mkfifo(tmp_path / "pipe")
    found = {entry.relative: entry for entry in walk(str(tmp_path))}
    assert {name: type(entry).__name__ for name, entry in found.items()} == {
        "d/e/f": "LocalFile", "to-file": "LocalFile", "to-dir": "Skipped", "broken": "Skipped",
        "pipe": "Skipped", "x.mini-oss-partial": "Skipped"}
    assert found["to-file"].size == 5
    assert found["to-dir"].reason == "a symbolic link to a directory"


# ------------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize("argv", [
    ["put", "-r", ".", "--prefix", "a/b"],             # not an object id prefix
    ["put", "-r", ".", "--prefix", ".x"],
    ["put", "-r", ".", "--object-id", "x"],
    ["put", "x", "--prefix", "p-"],                    # --prefix without -r
    ["get", "x", "dir"],                               # DIR without -r
    ["get", "-r", "p-", "dir", "-o", "other"],
    ["get", "-r", "p-", "--range", "0-1"],
    ["get", "-r", "p-", "dir", "--jobs", "0"],
])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv + ["--addr", "127.0.0.1:1"]) == 2
    assert "error" in capsys.readouterr().err


def test_help_documents_the_tree_flags(capsys):
    for command in ("put", "get"):
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        for flag in ("-r, --recursive", "--jobs N", "--continue-on-error", "130"):
            assert flag in text, (command, flag)
    assert main(["get", "--help"]) == 0
    assert "OBJECT_ID [DIR]" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# A whole tree, there and back


def test_put_r_then_get_r_round_trips_a_tree_of_200_files(tree_node, tmp_path):
    src = tmp_path / "src"
    files = make_tree(src, 200)
    os.symlink(src / "d0", src / "link-to-dir")         # never followed
    os.symlink(src / "read me.txt", src / "link-to-file")  # a file: uploaded as one
    files["link-to-file"] = files["read me.txt"]
    code, out, err = put_r(tree_node, src, "rt-")
    assert code == 0, err
    total = sum(map(len, files.values()))
    assert re.fullmatch(rf"put -r: 201 files, 201 uploaded \({re.escape(human_size(total))}\), "
                        rf"1 skipped \(not regular files\){SUMMARY_TIME}", out), out
    assert err == "mini-oss: skipping link-to-dir: a symbolic link to a directory\n"
    with Client(tree_node.addr) as client:
        ids = {info.object_id for info in client.list_objects(prefix="rt-")}
    assert "rt-donn_C3_A9es_2F_C3_A9t_C3_A9_202024_2Fr_C3_A9sum_C3_A9_20_C3_BC.txt" in ids
    assert len(ids) == 201

    dest = tmp_path / "out" / "nested"  # created as needed
    code, out, err = get_r(tree_node, "rt-", dest)
    assert code == 0, err
    assert re.fullmatch(rf"get -r: 201 files, 201 downloaded \({re.escape(human_size(total))}\)"
                        rf"{SUMMARY_TIME}", out), out
    assert read_tree(dest) == files  # every name and every byte


def test_a_rerun_after_success_moves_no_bytes_and_skips_every_file(tree_node, tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    files = make_tree(src, 30)
    assert put_r(tree_node, src, "again-")[0] == 0
    assert get_r(tree_node, "again-", dest)[0] == 0
    before = received(tree_node), sent(tree_node)

    code, out, err = put_r(tree_node, src, "again-", "--json")
    assert code == 0 and err == "", err
    report = json.loads(out)
    assert (report["files"], report["unchanged"], report["uploaded"]) == (30, 30, 0)
    code, out, err = get_r(tree_node, "again-", dest)
    assert code == 0 and err == "", err
    assert re.fullmatch(rf"get -r: 30 files, 0 downloaded \(0 B\), 30 skipped \(unchanged\)"
                        rf"{SUMMARY_TIME}", out), out
    assert (received(tree_node), sent(tree_node)) == before  # not one byte of data moved
    assert read_tree(dest) == files

    (src / "read me.txt").write_bytes(b"changed")  # one file changed: only it moves
    code, out, _ = put_r(tree_node, src, "again-", "--json")
    report = json.loads(out)
    assert code == 0 and (report["uploaded"], report["unchanged"]) == (1, 29)
    assert received(tree_node) - before[0] == len(b"changed")
    assert put_r(tree_node, src, "again-", "--quiet") == (0, "", "")


# ------------------------------------------------------------------------------------------
# Failures


def tree_with_one_too_large(root: pathlib.Path, count: int) -> tuple[dict[str, bytes], str]:
    """`count` files, one in the middle over the node's 64 KiB limit."""
    files = make_tree(root, count)
    big = sorted(files)[count // 2]
    files[big] = os.urandom(100 * KiB)
    (root / big).write_bytes(files[big])
    return files, big


def test_put_r_continue_on_error_does_every_other_file(tree_node, tmp_path):
    files, big = tree_with_one_too_large(tmp_path / "src", 200)
    code, out, err = put_r(tree_node, tmp_path / "src", "big-", "--continue-on-error")
    assert code == 1
    rest = sum(len(data) for name, data in files.items() if name != big)
    assert re.fullmatch(rf"put -r: 200 files, 199 uploaded \({re.escape(human_size(rest))}\), "
                        rf"1 failed{SUMMARY_TIME}", out), out
    big_id = object_id_for("big-", big)
    assert err.count("\n") == 1
    assert err.startswith(f"mini-oss: error: {big} ({big_id}): RESOURCE_EXHAUSTED"), err
    with Client(tree_node.addr) as client:
        ids = {info.object_id for info in client.list_objects(prefix="big-")}
    assert ids == {object_id_for("big-", name) for name in files if name != big}

    code, out, err = put_r(tree_node, tmp_path / "src", "big-", "--continue-on-error", "--json")
    report = json.loads(out)
    assert code == 1 and (report["unchanged"], report["failed"]) == (199, 1)
    assert report["failures"][0]["path"] == big and report["failures"][0]["object_id"] == big_id


def test_put_r_stops_at_the_first_failure_without_continue_on_error(tree_node, tmp_path):
    files, big = tree_with_one_too_large(tmp_path / "src", 40)
    code, out, err = put_r(tree_node, tmp_path / "src", "stop-", "--jobs", "1")
    assert code == 1
    # One worker takes the files in walking order: everything before the big file is
    # uploaded, nothing after it is started.
    before = [entry.relative for entry in walk(str(tmp_path / "src"))].index(big)
    assert re.fullmatch(rf"put -r: 40 files, {before} uploaded \(.*\), 1 failed, "
                        rf"{39 - before} not started{SUMMARY_TIME}", out), out
    assert err.startswith(f"mini-oss: error: {big} (") and err.count("\n") == 1
    with Client(tree_node.addr) as client:
        assert len(list(client.list_objects(prefix="stop-"))) == before


def test_get_r_a_path_blocked_by_a_directory_fails_that_file_only(tree_node, tmp_path):
    files = make_tree(tmp_path / "src", 40)
    assert put_r(tree_node, tmp_path / "src", "blk-")[0] == 0
    dest = tmp_path / "dest"
    (dest / "read me.txt").mkdir(parents=True)  # where a file is to go
    code, out, err = get_r(tree_node, "blk-", dest, "--continue-on-error")
    assert code == 1
    assert re.fullmatch(rf"get -r: 40 files, 39 downloaded \(.*\), 1 failed{SUMMARY_TIME}",
                        out), out
    assert err.startswith("mini-oss: error: read me.txt (blk-read_20me.txt): ")
    assert "exists and differs" in err and err.count("\n") == 1
    got = read_tree(dest)
    assert got == {name: data for name, data in files.items() if name != "read me.txt"}

    code, out, err = get_r(tree_node, "blk-", dest, "--json")  # without: still exit 1
    assert code == 1 and json.loads(out)["failed"] == 1 and "read me.txt" in err


def test_get_r_never_writes_outside_the_directory(tree_node, tmp_path):
    """Object ids a node can hold that unescape to paths leaving DIR are refused; control
    characters are made safe; a symbolic link in DIR is never followed."""
    hostile = ["h-.._2F.._2Fescape", "h-_2Fabs", "h-..", "h-a_2F.._2F.._2F.._2Fx",
               "h-_2E_2E_2Fup", "h-link_2Fplanted"]
    with Client(tree_node.addr) as client:
        for object_id in hostile + ["h-fine.txt", "h-ok_0Aline"]:
            client.upload(io.BytesIO(object_id.encode()), object_id)
    box = tmp_path / "box"
    dest = box / "in" / "dest"
    outside = tmp_path / "outside"
    outside.mkdir()
    dest.mkdir(parents=True)
    os.symlink(outside, dest / "link")
    code, out, err = get_r(tree_node, "h-", dest, "--continue-on-error")
    assert code == 1
    assert re.fullmatch(rf"get -r: 8 files, 2 downloaded \(.*\), 6 failed{SUMMARY_TIME}", out)
    assert sorted(line.split(": ")[2] for line in err.splitlines()) == sorted(
        ["link/planted (h-link_2Fplanted)"] + hostile[:-1]), err
    assert read_tree(tmp_path) == {"box/in/dest/fine.txt": b"h-fine.txt",
                                   "box/in/dest/ok_line": b"h-ok_0Aline"}
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------------------------------
# Interrupted trees resume


def largest(files) -> int:
    return max((os.path.getsize(f) for f in files if os.path.exists(f)), default=0)


def test_put_r_killed_mid_tree_resumes_each_file(slow_node, tmp_path):
    src = tmp_path / "src"
    # Each file above SMALL_PUT_MAX, so each goes by a session that can resume (smaller ones
    # take one PutObject call, with nothing to resume): ~8.5 MiB at 2 MiB/s.
    files = make_tree(src, 6, sizes=(SMALL_PUT_MAX + 128 * KiB, SMALL_PUT_MAX + 384 * KiB))
    total = sum(map(len, files.values()))
    start = received(slow_node)
    proc = cli("put", "-r", str(src), "--prefix", "kill-", "--addr", slow_node.addr,
               "--jobs", "2")
    parts = slow_node.data_dir / "parts"
    # Two files stored and two well into their bytes (the files in flight start and end
    # together: without this the kill could fall between two of them).
    wait_until(lambda: received(slow_node) - start >= total * 0.45
               and largest(parts.glob("kill-*")) >= 2 * CHUNK)
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL

    def cut_sessions():
        return [s for s in active_sessions(slow_node) if s.object_id.startswith("kill-")]

    wait_until(lambda: any(s.uploaded_offset for s in cut_sessions()))  # checkpointed
    sessions = cut_sessions()
    with Client(slow_node.addr) as client:
        stored = {info.object_id: info.size for info in client.list_objects(prefix="kill-")}
    remaining = total - sum(stored.values())
    kept = sum(s.uploaded_offset for s in sessions)
    assert 0 < remaining < total and kept > 0

    before = received(slow_node)
    code, out, err = run_cli("put", "-r", str(src), "--prefix", "kill-", "--addr",
                             slow_node.addr, "--json")
    moved = received(slow_node) - before
    assert code == 0, err
    assert "resuming kill-" in err
    report = json.loads(out)
    # (a file whose last bytes were on the wire at the kill may have been committed since)
    assert report["unchanged"] >= len(stored) and report["failed"] == 0
    assert report["unchanged"] + report["uploaded"] == len(files)
    assert moved <= remaining - kept + CHUNK * len(sessions), (moved, remaining, kept)
    print("kill -9 mid put -r:", {"remaining": remaining, "kept": kept, "moved": moved})
    # Every session the cut run had sent bytes to was resumed and committed. (One that a kill
    # falls between creating and recording can only be empty: it expires on the node.)
    assert [s for s in cut_sessions() if s.uploaded_offset] == []
    with Client(slow_node.addr) as client:
        for name, data in files.items():
            info = client.stat(object_id_for("kill-", name))
            assert info.sha256 == hashlib.sha256(data).hexdigest()


def test_get_r_interrupted_by_ctrl_c_exits_130_and_resumes(slow_node, tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    files = make_tree(src, 8, sizes=(256 * KiB, 384 * KiB))
    assert put_r(slow_node, src, "int-")[0] == 0
    total = sum(map(len, files.values()))
    start = sent(slow_node)
    proc = cli("get", "-r", "int-", str(dest), "--addr", slow_node.addr)
    wait_until(lambda: sent(slow_node) - start >= total // 3
               and largest(dest.rglob("*.mini-oss-partial")) >= 2 * CHUNK)
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, err
    assert re.fullmatch(r"mini-oss: interrupted after \d+ of 8 files; run the same command "
                        r"again to resume\n", err), err
    partials = list(dest.rglob("*.mini-oss-partial"))
    kept = sum(p.stat().st_size for p in partials)
    done = {name for name, data in files.items()
            if (dest / name).is_file() and (dest / name).read_bytes() == data}
    remaining = total - sum(len(files[name]) for name in done)
    assert kept > 0 and remaining > 0

    before = sent(slow_node)
    code, out, err = get_r(slow_node, "int-", dest)
    moved = sent(slow_node) - before
    assert code == 0, err
    assert "resuming int-" in err
    assert moved <= remaining - kept + CHUNK * len(partials), (moved, remaining, kept)
    print("Ctrl-C mid get -r:", {"remaining": remaining, "kept": kept, "moved": moved})
    assert read_tree(dest) == files
