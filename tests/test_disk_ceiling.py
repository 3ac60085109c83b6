"""The disk ceilings (tools.bench.disk_ceiling) at tiny sizes: the right shapes, every byte read
exactly once (buffered and O_DIRECT, an odd-sized file included), nothing left behind, bad
inputs refused, and the command line end to end. Measuring is for RESULTS.md, not for tests.

Page-cache drops here are per file (`system_wide=False`, `--fadvise-only`) except in one test,
so that running this file does not make everything else on the machine read cold.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

from tools.bench import disk_ceiling
from tools.bench.disk_ceiling import (DirectIORefused, drop_page_cache, read_ceiling, read_ceiling_best,
                                      small_file_ceiling, write_ceiling)

REPO = pathlib.Path(__file__).resolve().parent.parent
KiB = 1024
SIZES = [256 * KiB] * 4 + [300_001]  # 300_001: not a multiple of 4096, so O_DIRECT reads a short tail
READ_KEYS = {"mb_per_s", "bytes", "seconds", "files", "concurrency", "direct", "cpu_s"}
WRITE_KEYS = {"mb_per_s", "bytes", "seconds", "files", "concurrency", "cpu_s"}
SMALL_KEYS = {"ops_per_s", "ops", "seconds", "concurrency", "size", "cpu_s"}


def takes_o_direct(directory) -> bool:
    probe = os.path.join(directory, ".o_direct_probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644))
    except OSError:
        return False
    finally:
        if os.path.exists(probe):
            os.unlink(probe)
    return True


@pytest.fixture
def disk_dir(tmp_path):
    """tmp_path if its file system takes O_DIRECT (ext4 here), else a directory beside the repo's
    files (a tmpfs /tmp refuses O_DIRECT before Linux 6.6)."""
    if takes_o_direct(tmp_path):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=REPO, prefix=".test-disk-") as directory:
        yield pathlib.Path(directory)


@pytest.fixture
def files(disk_dir) -> list[str]:
    paths = []
    for i, size in enumerate(SIZES):
        path = disk_dir / f"object-{i}"
        path.write_bytes(os.urandom(size))
        paths.append(str(path))
    return paths


def test_drop_page_cache_says_how_it_dropped(files):
    # The one machine-wide drop of this file (as root: drop_caches).
    assert drop_page_cache(files) in {"drop_caches", "fadvise", "none"}
    assert drop_page_cache(files, system_wide=False) == "fadvise"
    assert drop_page_cache([], system_wide=False) == "none"


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "o_direct"])
def test_read_ceiling_reads_every_byte_once(files, direct):
    result = read_ceiling(files, 4, direct=direct, block=64 * KiB)
    assert set(result) == READ_KEYS
    assert result["bytes"] == sum(SIZES) and result["files"] == len(SIZES)
    assert result["concurrency"] == 4 and result["direct"] is direct
    assert result["mb_per_s"] > 0 and result["seconds"] > 0 and result["cpu_s"] >= 0


def test_read_ceiling_runs_no_more_readers_than_files(files):
    assert read_ceiling(files[:2], 8, direct=False)["concurrency"] == 2


def test_read_ceiling_best_keeps_the_better_run(files):
    result = read_ceiling_best(files, 4, system_wide=False)
    assert READ_KEYS | {"buffered_mb_per_s", "direct_mb_per_s", "cache_drop", "direct_refused"} == set(result)
    assert result["bytes"] == sum(SIZES) and result["cache_drop"] == "fadvise"
    assert result["direct_mb_per_s"] is not None and result["direct_refused"] is None
    assert result["mb_per_s"] == max(result["buffered_mb_per_s"], result["direct_mb_per_s"])


@pytest.fixture
def refusing_directory(tmp_path):
    """A directory whose file system refuses O_DIRECT: MINI_OSS_TEST_NO_O_DIRECT_DIR if set, else
    a ramfs mounted here for the test (ramfs has no O_DIRECT; tmpfs takes it since Linux 6.6)."""
    given = os.environ.get("MINI_OSS_TEST_NO_O_DIRECT_DIR", "")
    if given:
        assert not takes_o_direct(given), f"{given} takes O_DIRECT"
        yield given
        return
    mount_point = tmp_path / "ramfs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a ramfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        assert not takes_o_direct(str(mount_point)), "this ramfs takes O_DIRECT"
        yield str(mount_point)
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_o_direct_refused_names_the_file_system_and_reads_fall_back_to_buffered(refusing_directory):
    where = refusing_directory
    fs_type = disk_ceiling.file_system_of(where).split()[0]
    with tempfile.TemporaryDirectory(dir=where) as directory:
        path = os.path.join(directory, "object")
        pathlib.Path(path).write_bytes(os.urandom(300_001))
        with pytest.raises(DirectIORefused, match=f"file system {fs_type} "):
            read_ceiling([path], 1, direct=True)
        with pytest.raises(DirectIORefused, match=f"file system {fs_type} "):
            write_ceiling(directory, 2, 4096)
        assert os.listdir(directory) == ["object"]
        result = read_ceiling_best([path], 1, system_wide=False)
        assert result["direct_mb_per_s"] is None and fs_type in result["direct_refused"]
        assert result["direct"] is False and result["bytes"] == 300_001


@pytest.mark.parametrize("file_size, written", [(256 * KiB, 256 * KiB), (300_001, 303_104)])
def test_write_ceiling_writes_whole_blocks_and_leaves_nothing(disk_dir, file_size, written):
    result = write_ceiling(str(disk_dir), 4, file_size, block=64 * KiB)
    assert set(result) == WRITE_KEYS
    assert result["bytes"] == 4 * written and result["files"] == 4 and result["concurrency"] == 4
    assert result["mb_per_s"] > 0
    assert os.listdir(disk_dir) == []


def test_small_file_ceiling_commits_and_leaves_nothing(disk_dir):
    result = small_file_ceiling(str(disk_dir), 4, duration=0.3)
    assert set(result) == SMALL_KEYS
    assert result["ops"] > 0 and result["ops_per_s"] > 0
    assert result["size"] == 16 * KiB and result["concurrency"] == 4 and result["seconds"] >= 0.3
    assert os.listdir(disk_dir) == []


@pytest.mark.parametrize("call", [
    lambda d, f: read_ceiling(f, 0, direct=False),
    lambda d, f: read_ceiling([], 4, direct=False),
    lambda d, f: read_ceiling(f, 4, direct=True, block=1000),
    lambda d, f: write_ceiling(str(d), 0, 4096),
    lambda d, f: write_ceiling(str(d / "missing"), 4, 4096),
    lambda d, f: write_ceiling(str(d), 4, 0),
    lambda d, f: small_file_ceiling(str(d / "missing"), 4, duration=0.1),
    lambda d, f: small_file_ceiling(str(d), 0, duration=0.1),
    lambda d, f: small_file_ceiling(str(d), 4, duration=0),
], ids=["read-concurrency", "read-no-paths", "read-block", "write-concurrency", "write-missing-dir",
        "write-size", "small-missing-dir", "small-concurrency", "small-duration"])
def test_bad_inputs_are_refused(disk_dir, files, call):
    with pytest.raises(ValueError):
        call(disk_dir, files)


@pytest.mark.parametrize("argv, message", [
    (["--dir", "/nonexistent/disk-ceiling"], "not an existing directory"),
    (["--concurrency", "0"], "--concurrency must be >= 1"),
    (["--modes", "read,seek"], "--modes"),
])
def test_the_command_line_refuses_bad_flags(disk_dir, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        disk_ceiling.main(["--dir", str(disk_dir), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_command_line_end_to_end(disk_dir, tmp_path):
    out = tmp_path / "disk.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.bench.disk_ceiling", "--dir", str(disk_dir), "--concurrency", "4",
         "--file-size", "300001", "--block", "64KiB", "--small-duration", "0.3", "--fadvise-only",
         "--json", str(out)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in ("disk read ", "disk write ", "disk small "):
        assert line in proc.stdout
    assert "4 readers of 293.0 KiB files, cache dropped by fadvise" in proc.stdout
    report = json.loads(out.read_text())
    assert {"dir", "file_system", "config", "read", "write", "small"} <= set(report)
    assert report["read"]["bytes"] == 4 * 300_001 and report["read"]["direct_mb_per_s"] is not None
    assert set(report["write"]) == WRITE_KEYS and set(report["small"]) == SMALL_KEYS
    assert [name for name in os.listdir(disk_dir) if name != "disk.json"] == []
