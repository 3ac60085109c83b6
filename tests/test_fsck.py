"""`mini-oss fsck`: the read-only report and `--rebuild-catalog`, on data directories written by
real nodes, through the real command line (`python -m node fsck`)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node import names
from node.client import Client
from node.errors import InvalidName
from node.fsck import parse_object_file_name

ROOT = pathlib.Path(__file__).resolve().parent.parent
LONG_NAME = "L" * 240 + ".bin"  # 244 bytes: fits a file_name, not beside "long-object_..._<id>"
OBJECTS = {  # object_id -> (file_name, bytes, content_type, metadata)
    "a": ("a.txt", b"hello\n", "text/plain", {"owner": "me"}),
    "long-object": (LONG_NAME, os.urandom(70_000), "", {}),
    "tricky": ("x_0123456789abcdef01234567.tar.gz", os.urandom(3000), "", {}),
    "unicode": ("résumé 文件.pdf", os.urandom(10), "", {}),
    "empty": ("nothing", b"", "", {}),
}


def fsck(*argv, data_dir) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "node", "fsck", "--data-dir", str(data_dir),
                           *argv], capture_output=True, text=True, env=env, timeout=120)


def populate(node_factory, data_dir: pathlib.Path) -> dict[str, object]:
    """Objects written by a real node that is then stopped: object_id -> ObjectInfo."""
    node = node_factory(data_dir=data_dir, workers=1)
    with Client(node.addr) as client:
        for object_id, (file_name, data, content_type, metadata) in OBJECTS.items():
            client.upload(io.BytesIO(data), object_id, file_name=file_name,
                          content_type=content_type, metadata=metadata)
        first = client.upload(io.BytesIO(b"version 1"), "over", file_name="over.txt")
        second = client.upload(io.BytesIO(b"version 2!"), "over", file_name="over-2.dat")
        assert second.generation != first.generation  # overwritten: a new generation
        infos = {object_id: client.stat(object_id) for object_id in [*OBJECTS, "over"]}
    assert node.stop() == 0
    disk_names = os.listdir(data_dir / "objects")
    long_disk = [n for n in disk_names if n.startswith("long-object_")]
    assert len(long_disk) == 1 and len(long_disk[0].encode()) == 255  # shortened on disk
    assert len(disk_names) == len(infos)  # the replaced version is gone
    return infos


def snapshot(root: pathlib.Path) -> dict[str, tuple]:
    """Every entry under root: type, size, mtime, link target, content digest."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            link = os.readlink(path) if os.path.islink(path) else None
            digest = None
            if os.path.isfile(path) and not link:
                digest = hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, link, digest)
    return out


def expected_file_name(object_id: str, file_name: str, generation: str) -> str:
    """What a rebuild can know of the file name: the one on disk (shortened, if it was)."""
    stem, ext = names.fit_file_name(file_name, names.MAX_NAME_BYTES - len(object_id) - 2
                                    - len(generation))
    return stem + ext


# ------------------------------------------------------------------------------------------
# Disk names back to (file_name, upload_id)


@pytest.mark.parametrize("object_id, file_name", [
    ("a", "photo.jpg"), ("a", "noext"), ("a_b", "x_0123456789abcdef01234567"),
    ("a", "x._0123456789abcdef01234567"), ("a", "x_0123456789abcdef01234567.tar.gz"),
    ("a", "trailing."), ("a", ".bashrc"), ("a", "..."), ("o" * 128, "é" * 120 + ".txt"),
    ("o" * 128, "." + "e" * 200), ("o" * 128, "s" * 50 + "." + "e" * 200),
])
def test_parse_object_file_name(object_id, file_name):
    upload_id = names.new_upload_id()
    disk_name = names.object_file_name(object_id, file_name, upload_id)
    parsed = parse_object_file_name(object_id, disk_name)
    assert parsed is not None and parsed[1] == upload_id
    stem, ext = names.fit_file_name(file_name, 255 - len(object_id) - 2 - len(upload_id))
    assert parsed[0] == stem + ext


valid_object_ids = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}", fullmatch=True)
file_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=255)
upload_ids = st.text("0123456789abcdef_", min_size=24, max_size=24).map(
    lambda s: s.replace("_", "0"))


@given(valid_object_ids, file_names, upload_ids)
def test_parse_object_file_name_round_trips(object_id, file_name, upload_id):
    try:
        disk_name = names.object_file_name(object_id, file_name, upload_id)
    except InvalidName:
        return  # not a name the node accepts
    parsed = parse_object_file_name(object_id, disk_name)
    assert parsed is not None
    recovered, parsed_id = parsed
    assert parsed_id == upload_id
    stem, ext = names.fit_file_name(file_name, 255 - len(object_id) - 2 - len(upload_id))
    assert recovered == stem + ext  # the full name when it was not shortened


def test_parse_rejects_foreign_names():
    assert parse_object_file_name("a", "b_x_0123456789abcdef01234567") is None
    assert parse_object_file_name("a", "a_x_0123") is None
    assert parse_object_file_name("a", "a_x_0123456789abcdef01234567_junk") is None


# ------------------------------------------------------------------------------------------
# A lost catalog, rebuilt


@pytest.mark.parametrize("damage", ["missing", "zero-bytes", "garbage"])
def test_rebuild_a_lost_catalog(node_factory, tmp_path, damage):
    data_dir = tmp_path / "data"
    infos = populate(node_factory, data_dir)
    catalog = data_dir / "catalog.db"
    if damage == "missing":
        catalog.unlink()
    elif damage == "zero-bytes":
        catalog.write_bytes(b"")
    else:
        catalog.write_bytes(os.urandom(8192))
    before = snapshot(data_dir)

    out = fsck(data_dir=data_dir)
    assert out.returncode == 1, out.stdout + out.stderr
    problem = out.stdout.splitlines()[0]
    assert problem.startswith("catalog.db: ")
    assert {"missing": "is missing", "zero-bytes": "is empty",
            "garbage": "cannot be read"}[damage] in problem
    assert f"mini-oss fsck --data-dir {data_dir} --rebuild-catalog" in problem
    assert f"{len(infos)} objects can be rebuilt" in out.stdout.splitlines()[-1]
    report = json.loads(fsck("--json", "--verify", data_dir=data_dir).stdout)
    assert report["clean"] is False and report["rebuildable"] == len(infos)
    assert report["catalog"]["state"] == {"missing": "missing", "zero-bytes": "empty",
                                          "garbage": "damaged"}[damage]
    assert snapshot(data_dir) == before  # the report wrote nothing, created no catalog

    out = fsck("--rebuild-catalog", data_dir=data_dir)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(infos)} objects" in out.stdout.splitlines()[-1]
    kept = sorted(p.name for p in data_dir.iterdir() if p.name.startswith("catalog.db.damaged-"))
    assert len(kept) == (0 if damage == "missing" else 1)
    assert not [p for p in data_dir.iterdir() if p.name.startswith(".fsck-")]
    out = fsck("--verify", data_dir=data_dir)
    assert out.returncode == 0, out.stdout

    node = node_factory(data_dir=data_dir, workers=1)
    with Client(node.addr) as client:
        listed = {o.object_id: o for o in client.list_objects()}
        assert set(listed) == set(infos)
        for object_id, info in infos.items():
            buffer = io.BytesIO()
            got = client.download(object_id, buffer)
            data = buffer.getvalue()
            assert hashlib.sha256(data).hexdigest() == info.sha256 == got.sha256
            assert got.size == info.size == len(data)
            assert got.generation == info.generation
            assert got.file_name == expected_file_name(object_id, info.file_name, info.generation)
            if object_id in OBJECTS:
                assert data == OBJECTS[object_id][1]
            assert got.content_type == "" and dict(got.metadata) == {}  # not on disk: lost
        assert listed["long-object"].file_name != LONG_NAME  # as shortened on disk
        assert listed["long-object"].file_name.endswith(".bin")
        assert listed["tricky"].file_name == OBJECTS["tricky"][0]
        assert listed["over"].file_name == "over-2.dat"
        # The node works on as before: a new version, a delete.
        client.upload(io.BytesIO(b"after"), "a", file_name="a.txt")
        client.delete("empty")
    assert node.stop() == 0
    assert fsck(data_dir=data_dir).returncode == 0


def test_rebuild_reports_what_it_cannot_adopt(node_factory, tmp_path):
    data_dir = tmp_path / "data"
    infos = populate(node_factory, data_dir)
    (data_dir / "catalog.db").unlink()
    os.unlink(data_dir / "index" / "a")  # its file is left without an index entry
    os.symlink("../objects/gone_x_0123456789abcdef01234567", data_dir / "index" / "gone")
    (data_dir / "parts" / "p_x.part.0123456789abcdef01234567").write_bytes(b"half")
    out = fsck("--rebuild-catalog", data_dir=data_dir)
    assert out.returncode == 0, out.stderr
    assert "index/gone: its file objects/gone_x_0123456789abcdef01234567 is missing" in out.stdout
    assert any(line.startswith("objects/a_a_") and "no index entry" in line
               for line in out.stdout.splitlines())
    assert "parts/p_x.part.0123456789abcdef01234567" in out.stdout
    assert f"{len(infos) - 1} objects" in out.stdout.splitlines()[-1]
    node = node_factory(data_dir=data_dir, workers=1)
    with Client(node.addr) as client:
        assert {o.object_id for o in client.list_objects()} == set(infos) - {"a"}


# ------------------------------------------------------------------------------------------
# The report on a healthy data directory, and what --verify finds


def test_fsck_of_a_healthy_data_dir_changes_nothing(node_factory, tmp_path):
    data_dir = tmp_path / "data"
    infos = populate(node_factory, data_dir)
    before = snapshot(data_dir)
    out = fsck(data_dir=data_dir)
    assert out.returncode == 0, out.stdout
    assert out.stdout.splitlines() == [out.stdout.strip()]  # the summary alone
    assert f"catalog ok; {len(infos)} objects checked" in out.stdout and "0 problems" in out.stdout
    out = fsck("--verify", "--json", data_dir=data_dir)
    assert out.returncode == 0
    report = json.loads(out.stdout)
    assert report["clean"] and report["verified"] and report["objects"] == len(infos)
    assert report["catalog"]["state"] == "ok" and report["problems"] == []
    assert snapshot(data_dir) == before


def test_verify_catches_a_flipped_byte(node_factory, tmp_path):
    data_dir = tmp_path / "data"
    populate(node_factory, data_dir)
    [disk_name] = [n for n in os.listdir(data_dir / "objects") if n.startswith("long-object_")]
    path = data_dir / "objects" / disk_name
    raw = bytearray(path.read_bytes())
    raw[12345] ^= 0x01
    path.write_bytes(bytes(raw))
    assert fsck(data_dir=data_dir).returncode == 0  # sizes and names agree
    out = fsck("--verify", data_dir=data_dir)
    assert out.returncode == 1
    [line] = [line for line in out.stdout.splitlines() if "long-object" in line]
    assert line.startswith("objects/long-object_") and "hash to" in line
    assert "1 problem" in out.stdout.splitlines()[-1]
    with open(path, "ab") as f:
        f.write(b"x")
    out = fsck("--verify", "--json", data_dir=data_dir)
    assert [p["kind"] for p in json.loads(out.stdout)["problems"]] == ["object_size"]


def test_fsck_reports_orphans_and_quarantine(node_factory, tmp_path):
    data_dir = tmp_path / "data"
    populate(node_factory, data_dir)
    (data_dir / "objects" / "stray_x_0123456789abcdef01234567").write_bytes(b"?")
    (data_dir / "parts" / "p_x.part.0123456789abcdef01234567").write_bytes(b"half")
    (data_dir / "parts" / "q_y.put.0123456789abcdef01234567").write_bytes(b"cut short")
    os.symlink("../objects/nothing", data_dir / "index" / "dangling")
    (data_dir / "quarantine" / "objects").mkdir(parents=True)
    (data_dir / "quarantine" / "objects" / "old_x_0123456789abcdef01234567").write_bytes(b"!")
    [a_disk] = [n for n in os.listdir(data_dir / "objects") if n.startswith("a_a_")]
    os.unlink(data_dir / "objects" / a_disk)
    out = fsck("--json", data_dir=data_dir)
    assert out.returncode == 1
    report = json.loads(out.stdout)
    found = {(p["kind"], p["path"]) for p in report["problems"]}
    assert found == {
        ("orphan_object", "objects/stray_x_0123456789abcdef01234567"),
        ("orphan_part", "parts/p_x.part.0123456789abcdef01234567"),
        ("orphan_part", "parts/q_y.put.0123456789abcdef01234567"),
        ("index", "index/dangling"),
        ("quarantine", "quarantine/objects/old_x_0123456789abcdef01234567"),
        ("object_missing", f"objects/{a_disk}"),
    }
    assert report["quarantine"] == {"objects": ["old_x_0123456789abcdef01234567"]}
    [put_part] = [p for p in report["problems"] if ".put." in p["path"]]
    assert "one-call put" in put_part["message"] and "removes it" in put_part["message"]
    out = fsck(data_dir=data_dir)
    assert out.returncode == 1 and len(out.stdout.splitlines()) == 6 + 1


# ------------------------------------------------------------------------------------------
# --rebuild-catalog refuses what it must not replace


def test_rebuild_refuses_a_healthy_catalog_without_force(node_factory, tmp_path):
    data_dir = tmp_path / "data"
    infos = populate(node_factory, data_dir)
    before = snapshot(data_dir)
    out = fsck("--rebuild-catalog", data_dir=data_dir)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("mini-oss: error: catalog ")
    assert "--force" in out.stderr
    after = snapshot(data_dir)
    after.pop("mini-oss.lock", None)  # the lock it took (and released) may be new
    before.pop("mini-oss.lock", None)
    assert after == before
    assert fsck("--force", data_dir=data_dir).returncode == 2  # --force alone: a usage error

    out = fsck("--rebuild-catalog", "--force", data_dir=data_dir)
    assert out.returncode == 0, out.stderr
    node = node_factory(data_dir=data_dir, workers=1)
    with Client(node.addr) as client:
        a = client.stat("a")  # the old catalog agreed about this version: nothing lost
        assert (a.content_type, dict(a.metadata)) == ("text/plain", {"owner": "me"})
        assert a.generation == infos["a"].generation and a.created_at_unix_ms == infos["a"].created_at_unix_ms


def test_rebuild_is_refused_while_a_node_runs(node_factory, tmp_path):
    data_dir = tmp_path / "data"
    populate(node_factory, data_dir)
    node = node_factory(data_dir=data_dir, workers=1)
    out = fsck("--rebuild-catalog", "--force", data_dir=data_dir)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("mini-oss: error: ")
    assert str(data_dir) in out.stderr and f"pid {node.proc.pid}" in out.stderr
    assert not [p for p in data_dir.iterdir() if p.name.startswith(("catalog.db.damaged", ".fsck-"))]
    with Client(node.addr) as client:
        assert client.stat("a").file_name == "a.txt"
    # The read-only report runs beside the node.
    out = fsck("--verify", data_dir=data_dir)
    assert out.returncode == 0, out.stdout


def test_fsck_usage_errors(tmp_path):
    out = fsck(data_dir=tmp_path / "nope")
    assert out.returncode == 1 and "does not exist" in out.stderr and out.stderr.count("\n") == 1
    assert not (tmp_path / "nope").exists()
    out = fsck("--rebuild-catalog", data_dir=tmp_path / "nope")
    assert out.returncode == 1 and not (tmp_path / "nope").exists()
    out = fsck("--bogus", data_dir=tmp_path)
    assert out.returncode == 2
    out = fsck(data_dir=tmp_path)  # a new, empty data dir: nothing wrong, nothing created
    assert out.returncode == 0, out.stdout
    assert "catalog missing" in out.stdout and os.listdir(tmp_path) == []
