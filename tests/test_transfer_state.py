"""The command line's resume entries (node.transfers.transfer_state) and progress line (node.transfers.progress)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.transfers.progress import ProgressLine, human_duration, human_size, progress_line
from node.transfers.transfer_state import (DOWNLOAD, UPLOAD, DownloadEntry, FileIdentity, StateStore,
                                 UploadEntry, cache_dir, change_reason, entry_key, partial_path)

IDENT = FileIdentity(size=10, mtime_ns=1, inode=2, device=3, ctime_ns=4)


def upload_entry(tmp_path, **kw) -> UploadEntry:
    fields = dict(node="h:1", object_id="o", path=str(tmp_path / "f"), upload_id="u",
                  sha256="ab" * 32, file=IDENT)
    fields.update(kw)
    return UploadEntry(**fields)


def test_cache_dir_follows_xdg():
    assert cache_dir({"XDG_CACHE_HOME": "/x/cache"}) == "/x/cache/mini-oss"
    home = os.path.expanduser("~")
    assert cache_dir({}) == os.path.join(home, ".cache", "mini-oss")
    assert cache_dir({"XDG_CACHE_HOME": "relative"}) == os.path.join(home, ".cache", "mini-oss")


def test_change_reason():
    assert change_reason(IDENT, IDENT) is None
    assert "replaced" in change_reason(IDENT, FileIdentity(10, 1, 9, 3, 4))
    assert "size changed" in change_reason(IDENT, FileIdentity(11, 1, 2, 3, 4))
    assert change_reason(IDENT, FileIdentity(10, 5, 2, 3, 4)) == "it was modified"
    assert change_reason(IDENT, FileIdentity(10, 1, 2, 3, 5)) == "it was modified"


def test_entry_key_separates_kind_node_object_and_path():
    keys = {entry_key(k, n, o, p) for k in (UPLOAD, DOWNLOAD) for n in ("a:1", "b:1")
            for o in ("x", "y") for p in ("/p", "/q")}
    assert len(keys) == 16
    assert all(k.endswith(".json") and "/" not in k for k in keys)


def test_store_round_trip_mode_and_drop(tmp_path):
    store = StateStore(str(tmp_path / "cache"))
    up = upload_entry(tmp_path)
    down = DownloadEntry(node="h:1", object_id="o", path=str(tmp_path / "f"), generation="g",
                         size=5, sha256="cd" * 32)
    store.save(up)
    store.save(down)
    assert store.load(UPLOAD, "h:1", "o", str(tmp_path / "f")) == up
    assert store.load(DOWNLOAD, "h:1", "o", str(tmp_path / "f")) == down
    assert store.load(UPLOAD, "h:2", "o", str(tmp_path / "f")) is None
    files = os.listdir(store.directory)
    assert len(files) == 2
    for name in files:
        assert stat.S_IMODE(os.stat(os.path.join(store.directory, name)).st_mode) == 0o600
    store.drop(UPLOAD, "h:1", "o", str(tmp_path / "f"))
    store.drop(UPLOAD, "h:1", "o", str(tmp_path / "f"))  # twice is fine
    assert store.load(UPLOAD, "h:1", "o", str(tmp_path / "f")) is None


def test_a_torn_entry_is_dropped_never_trusted(tmp_path):
    store = StateStore(str(tmp_path))
    up = upload_entry(tmp_path)
    store.save(up)
    (name,) = os.listdir(tmp_path)
    (tmp_path / name).write_text('{"kind": "upload", "node": ')
    assert store.load(UPLOAD, up.node, up.object_id, up.path) is None
    assert not (tmp_path / name).exists()


def test_partial_path_fits_in_255_bytes(tmp_path):
    assert partial_path("/d/a.bin") == "/d/a.bin.mini-oss-partial"
    long = "é" * 127 + ".x"
    path = partial_path(f"/d/{long}")
    assert os.path.dirname(path) == "/d" and len(os.path.basename(path).encode()) <= 255
    assert path.endswith(".mini-oss-partial") and path != partial_path("/d/" + "é" * 126 + ".y")


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"),
                                     (int(1.2 * 2**30), "1.2 GiB"), (3 * 2**30, "3.0 GiB"),
                                     (5 * 2**40, "5.0 TiB")])
def test_human_size_is_binary(n, text):
    assert human_size(n) == text


def test_human_duration():
    assert human_duration(7) == "0:07" and human_duration(754) == "12:34"
    assert human_duration(3723) == "1:02:03"


def test_progress_line():
    line = progress_line("photo-1", 2**30, 4 * 2**30, 10 * 2**20)
    assert line == "photo-1   25%  1.0 GiB of 4.0 GiB  10.0 MiB/s  ETA 5:07"
    assert progress_line("x", 0, 0, None) == "x  100%  0 B of 0 B"


@given(st.integers(0, 2**50), st.integers(1, 2**50))
def test_progress_line_never_fails(done, total):
    assert progress_line("x", min(done, total), total, 1.5)


def test_progress_line_draws_on_one_line_with_a_rate():
    now = [0.0]
    out = io.StringIO()
    bar = ProgressLine("o", stream=out, clock=lambda: now[0])
    for i in range(11):
        now[0] = i * 0.5
        bar(i * 2**20, 10 * 2**20)
    bar.close()
    text = out.getvalue()
    assert "\n" not in text and "2.0 MiB/s" in text and text.endswith("\r")


def test_download_entries_with_and_without_ranges(tmp_path):
    """A parallel download's entry (version 2) keeps its ranges; a one-stream entry is still
    written as version 1, exactly as before, and an entry of version 1 reads back."""
    store = StateStore(str(tmp_path))
    path = str(tmp_path / "f")
    plain = DownloadEntry(node="h:1", object_id="o", path=path, generation="g", size=9,
                          sha256="cd" * 32)
    store.save(plain)
    (name,) = os.listdir(tmp_path)
    written = json.loads((tmp_path / name).read_text())
    assert written["version"] == 1 and "ranges" not in written
    assert store.load(DOWNLOAD, "h:1", "o", path) == plain
    ranged = dataclasses.replace(plain, ranges=((0, 4, 4), (4, 9, 1)))
    store.save(ranged)
    written = json.loads((tmp_path / name).read_text())
    assert written["version"] == 2 and written["ranges"] == [[0, 4, 4], [4, 9, 1]]
    assert store.load(DOWNLOAD, "h:1", "o", path) == ranged


@pytest.mark.parametrize("change", [{"version": 3}, {"version": "2"},
                                    {"ranges": [[0, 4]]}, {"ranges": [[0, 4, "4"]]},
                                    {"version": 1, "ranges": [[0, 9, 0]]}])
def test_a_download_entry_this_release_cannot_read_is_dropped(tmp_path, change):
    store = StateStore(str(tmp_path))
    path = str(tmp_path / "f")
    store.save(DownloadEntry(node="h:1", object_id="o", path=path, generation="g", size=9,
                             sha256="cd" * 32, ranges=((0, 9, 0),)))
    (name,) = os.listdir(tmp_path)
    data = json.loads((tmp_path / name).read_text())
    data.update(change)
    (tmp_path / name).write_text(json.dumps(data))
    assert store.load(DOWNLOAD, "h:1", "o", path) is None
    assert not (tmp_path / name).exists()
