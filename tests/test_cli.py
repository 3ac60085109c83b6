"""`mini-oss` command line: argument parsing helpers, and the commands against a real node."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node import errors
from node.cli import derive_object_id, format_error, main, parse_range, parse_size
from node.names import validate_object_id

MiB = 1024 * 1024


# ------------------------------------------------------------------------------------------
# Pure helpers


@pytest.mark.parametrize("text, expected", [
    ("0-10", (0, 10)), ("5-", (5, None)), ("-100", (-100, None)), ("7-7", (7, 7)),
    (" 1 - 2 ", (1, 2)),
])
def test_parse_range(text, expected):
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["", "-", "10", "a-b", "5-2", "-0", "1-2-3", "-5-"])
def test_parse_range_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_range(text)


def test_parse_size():
    assert parse_size("65536") == 65536
    assert parse_size("64K") == 64 * 1024
    assert parse_size("1MiB") == MiB
    assert parse_size("2g") == 2 << 30
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("lots")


@pytest.mark.parametrize("name, expected", [
    ("report.pdf", "report.pdf"), ("my file (1).txt", "my_file__1_.txt"),
    (".bashrc", "bashrc"), ("résumé.pdf", "resume.pdf"), ("文件.txt", "__.txt"),
    ("/some/dir/a-b_c.tar.gz", "a-b_c.tar.gz"), ("x" * 200 + ".bin", "x" * 124 + ".bin"),
])
def test_derive_object_id(name, expected):
    assert derive_object_id(name) == expected


@given(st.text(max_size=300))
def test_derive_object_id_valid_or_value_error(name):
    try:
        object_id = derive_object_id(name)
    except ValueError:
        return
    assert validate_object_id(object_id) == object_id


def test_format_error_is_one_line():
    err = errors.ObjectNotFound("no object 'x'\nsecond line")
    assert format_error(err) == "NOT_FOUND OBJECT_NOT_FOUND: no object 'x' second line"
    err = errors.TransportError("UNAVAILABLE", "failed to connect")
    assert format_error(err, "h:1") == "UNAVAILABLE: cannot reach the node at h:1: failed to connect"
    busy = errors.SessionBusy("busy", upload_id="abc")
    assert "--upload-id abc" in format_error(busy)


def test_usage_errors_exit_2(capsys):
    assert main(["get", "x", "--range", "9-1"]) == 2
    assert main(["frobnicate"]) == 2
    assert main([]) == 2
    assert main(["serve", "--workers", "-1"]) == 2  # a settings error, before any server import
    err = capsys.readouterr().err
    assert "mini-oss serve: error" not in err and "workers must be >= 0" in err


def test_unreachable_node_is_one_line(capsys):
    assert main(["stat", "x", "--addr", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mini-oss: error: UNAVAILABLE: cannot reach")


def test_missing_file_is_one_line(capsys, tmp_path):
    assert main(["put", str(tmp_path / "nope"), "--addr", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No such file" in err


def test_client_commands_do_not_import_the_server():
    code = ("import sys; from node import cli; cli.main(['stat', 'x', '--addr', '127.0.0.1:1']);"
            "print('node.server' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------
# Against a real node


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


def test_put_get_100_mib(node, tmp_path, capsys):
    src = tmp_path / "big file.bin"
    with open(src, "wb") as f:
        for _ in range(100):
            f.write(os.urandom(MiB))
    code, out, err = run(capsys, "put", str(src), "--addr", node.addr, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["object_id"] == "big_file.bin" and info["file_name"] == "big file.bin"
    assert info["size"] == 100 * MiB and info["sha256"] == digest(src)
    assert set(info) >= {"object_id", "file_name", "size", "sha256", "content_type", "metadata",
                         "generation", "created_at_unix_ms"}

    dest = tmp_path / "copy.bin"
    code, out, err = run(capsys, "get", "big_file.bin", "-o", str(dest), "--addr", node.addr)
    assert code == 0, err
    assert digest(dest) == digest(src)
    assert out.startswith("downloaded big_file.bin")


def test_json_outputs_and_default_names(node, tmp_path, capsys, monkeypatch):
    src = tmp_path / "notes.txt"
    src.write_bytes(b"hello world\n")
    code, out, _ = run(capsys, "put", str(src), "--addr", node.addr, "--object-id", "n1",
                       "-m", "owner=me")
    assert code == 0 and out.startswith("uploaded n1")
    run(capsys, "put", str(src), "--addr", node.addr, "--object-id", "n2", "--content-type", "a/b")

    code, out, _ = run(capsys, "stat", "n1", "--addr", node.addr, "--json")
    info = json.loads(out)
    assert info["content_type"] == "text/plain" and info["metadata"] == {"owner": "me"}
    code, out, _ = run(capsys, "stat", "n1", "--addr", node.addr)
    assert "sha256:" in out and "notes.txt" in out

    code, out, _ = run(capsys, "ls", "--addr", node.addr, "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [o["object_id"] for o in lines] == ["n1", "n2"]
    code, out, _ = run(capsys, "ls", "--addr", node.addr, "--prefix", "n2")
    assert out.split()[-1] == "n2" and len(out.splitlines()) == 1

    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    code, out, err = run(capsys, "get", "n1", "--addr", node.addr)
    assert code == 0, err
    assert (workdir / "notes.txt").read_bytes() == b"hello world\n"
    code, out, err = run(capsys, "get", "n1", "--addr", node.addr, "--range", "6-",
                         "-o", "tail.txt")
    assert (workdir / "tail.txt").read_bytes() == b"world\n"

    code, out, _ = run(capsys, "rm", "n1", "--addr", node.addr, "--json")
    assert json.loads(out) == {"object_id": "n1", "deleted": True}
    code, out, err = run(capsys, "rm", "n1", "--addr", node.addr)
    assert code == 1 and out == ""
    assert err.startswith("mini-oss: error: NOT_FOUND OBJECT_NOT_FOUND") and err.count("\n") == 1


def test_errors_are_one_line_and_leave_no_file(node, tmp_path, capsys):
    src = tmp_path / "a.txt"
    src.write_bytes(b"a")
    assert run(capsys, "put", str(src), "--addr", node.addr, "--if-absent")[0] == 0
    code, out, err = run(capsys, "put", str(src), "--addr", node.addr, "--if-absent")
    assert code == 1 and err.startswith("mini-oss: error: ALREADY_EXISTS OBJECT_EXISTS")
    assert err.count("\n") == 1

    dest = tmp_path / "missing.out"
    code, out, err = run(capsys, "get", "missing", "-o", str(dest), "--addr", node.addr)
    assert code == 1 and "OBJECT_NOT_FOUND" in err and not dest.exists()
    code, out, err = run(capsys, "get", "a.txt", "--range", "5-9", "-o", str(dest),
                         "--addr", node.addr)
    assert code == 1 and "OUT_OF_RANGE INVALID_RANGE" in err and not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("data")) == ["a.txt"]


def test_python_dash_m_node_and_stdout(node, tmp_path):
    src = tmp_path / "digits.txt"
    src.write_bytes(b"0123456789")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    base = [sys.executable, "-m", "node"]
    put = subprocess.run(base + ["put", str(src), "--addr", node.addr, "--json"],
                         capture_output=True, env=env)
    assert put.returncode == 0, put.stderr
    assert json.loads(put.stdout)["size"] == 10
    get = subprocess.run(base + ["get", "digits.txt", "-o", "-", "--range", "-3",
                                 "--addr", node.addr], capture_output=True, env=env)
    assert get.returncode == 0 and get.stdout == b"789"
    assert b"downloaded digits.txt" in get.stderr  # the summary never mixes with the data
    bad = subprocess.run(base + ["stat", "nope", "--addr", node.addr], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        bad.stderr.strip()] and bad.stderr.startswith("mini-oss: error: NOT_FOUND OBJECT_NOT_FOUND")
