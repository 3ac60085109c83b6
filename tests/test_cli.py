"""`mini-oss` command line: argument parsing helpers, and the commands against a real node."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node import errors
from node.cli import (derive_object_id, format_error, main, parse_range, parse_size,
                      safe_file_name)
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
    kept = errors.TransportError("UNAVAILABLE", "gone").with_metadata(upload_id="abc",
                                                                     rerun_resumes="1")
    assert format_error(kept) == "UNAVAILABLE: gone (run the same command again to resume)"


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


# ------------------------------------------------------------------------------------------
# `get` without -o: the node's file name is not trusted (issue "Trust first", finding 4)


@pytest.mark.parametrize("name, expected", [
    ("notes.txt", "notes.txt"), (".bashrc", "bashrc"), ("/etc/passwd", "passwd"),
    ("../x", "x"), ("../../.ssh/authorized_keys", "authorized_keys"), ("a\\b", "b"),
    ("..\\..\\evil.exe", "evil.exe"), ("dir/", "obj-1"), ("..", "obj-1"), (".", "obj-1"),
    ("", "obj-1"), ("...", "obj-1"), ("a\x00b", "a_b"), ("x\n\x1b[31m.txt", "x__[31m.txt"),
    ("evil\u202etxt.exe", "evil_txt.exe"), ("résumé.pdf", "résumé.pdf"),
    ("é" * 200 + ".txt", "é" * 125 + ".txt"),
])
def test_safe_file_name(name, expected):
    assert safe_file_name(name, "obj-1") == expected


def test_safe_file_name_falls_back_to_download():
    assert safe_file_name("..", "..") == "download"
    assert safe_file_name("/", "") == "download"


def _is_plain_base_name(name: str) -> bool:
    raw = name.encode("utf-8")  # raises on lone surrogates
    return (bool(name) and name not in (".", "..") and not name.startswith(".")
            and "/" not in name and "\\" not in name and "\x00" not in name
            and not any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name)
            and len(raw) <= 255)


@given(st.text(max_size=400), st.text(max_size=200))
def test_safe_file_name_is_always_a_plain_base_name(name, fallback):
    assert _is_plain_base_name(safe_file_name(name, fallback))


@given(st.lists(st.sampled_from(["..", ".", "/", "\\", "\x00", "\n", "\x1b", "a", "é", ".x",
                                 "/etc/passwd", "~", " ", "\u202e", "\ud800"]), max_size=40))
def test_safe_file_name_of_hostile_pieces(pieces):
    name = "".join(pieces)
    assert _is_plain_base_name(safe_file_name(name, name))


def _cli(*argv, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([sys.executable, "-m", "node", *argv], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60)


def test_get_writes_only_a_safe_name_in_the_current_directory(node, tmp_path):
    hostile = {"dot": ".bashrc", "back": "a\\b", "dots": "...", "ctl": "x\n\x1b[31m.txt",
               "bidi": "gnp\u202etxt.exe"}
    from node.client import Client

    with Client(node.addr) as client:
        for object_id, file_name in hostile.items():
            client.upload(io.BytesIO(object_id.encode() * 3), object_id, file_name=file_name)
    home = tmp_path / "home"
    home.mkdir()
    for object_id in hostile:
        out = _cli("get", object_id, "--addr", node.addr, cwd=home)
        assert out.returncode == 0, out.stderr
    expected = {"bashrc": "dot", "b": "back", "dots": "dots", "x__[31m.txt": "ctl",
                "gnp_txt.exe": "bidi"}
    assert sorted(os.listdir(home)) == sorted(expected)  # nothing else, no temp files left
    for name, object_id in expected.items():
        assert (home / name).read_bytes() == object_id.encode() * 3
    assert sorted(os.listdir(tmp_path)) == ["data0", "home"]  # nothing written outside


def test_get_does_not_replace_an_existing_file_without_force(node, tmp_path):
    from node.client import Client

    with Client(node.addr) as client:
        client.upload(io.BytesIO(b"from the node"), "rc", file_name=".bashrc")
    home = tmp_path / "home"
    home.mkdir()
    (home / "bashrc").write_bytes(b"mine")
    out = _cli("get", "rc", "--addr", node.addr, cwd=home)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("mini-oss: error: ")
    assert "bashrc" in out.stderr and "--force" in out.stderr
    assert (home / "bashrc").read_bytes() == b"mine"
    # -o DIR names the directory, not the file: the same rule holds.
    out = _cli("get", "rc", "--addr", node.addr, "-o", str(home), cwd=tmp_path)
    assert out.returncode == 1 and (home / "bashrc").read_bytes() == b"mine"
    # A symlink counts as an existing file: it is neither followed nor replaced.
    (home / "link-target").write_bytes(b"target")
    os.symlink("link-target", home / "bashrc2")
    with Client(node.addr) as client:
        client.upload(io.BytesIO(b"x"), "rc2", file_name="bashrc2")
    out = _cli("get", "rc2", "--addr", node.addr, cwd=home)
    assert out.returncode == 1 and os.path.islink(home / "bashrc2")
    assert (home / "link-target").read_bytes() == b"target"
    assert sorted(os.listdir(home)) == ["bashrc", "bashrc2", "link-target"]

    out = _cli("get", "rc", "--addr", node.addr, "--force", cwd=home)
    assert out.returncode == 0, out.stderr
    assert (home / "bashrc").read_bytes() == b"from the node"
    # With -o FILE the user chose the path: it is replaced as before.
    out = _cli("get", "rc", "--addr", node.addr, "-o", "bashrc2", cwd=home)
    assert out.returncode == 0, out.stderr
    assert (home / "bashrc2").read_bytes() == b"from the node" and not os.path.islink(home / "bashrc2")
    assert (home / "link-target").read_bytes() == b"target"
    assert sorted(os.listdir(home)) == ["bashrc", "bashrc2", "link-target"]


def test_get_of_a_255_byte_file_name(node, tmp_path):
    """The temporary file next to the target fits the file system's limit too."""
    from node.client import Client

    name = "é" * 125 + ".txt"  # 254 bytes
    with Client(node.addr) as client:
        client.upload(io.BytesIO(b"long"), "long", file_name=name)
    out = _cli("get", "long", "--addr", node.addr, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / name).read_bytes() == b"long"


def test_every_setting_has_a_serve_flag():
    from node import cli, config

    flags = {flag[2:].replace("-", "_") for flag, _kind, _metavar in cli.SERVE_FLAGS}
    assert flags == {name for name, _default, _doc in config.documentation()}
    args = cli.build_parser().parse_args(["serve", "--no-direct-io", "--sweep-interval", "2",
                                          "--download-stall-timeout", "5"])
    assert (args.direct_io, args.sweep_interval, args.download_stall_timeout) == (False, 2.0, 5.0)
