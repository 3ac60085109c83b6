"""Smoke test of the bench harness (tools/bench): upload, download and the bare ceiling, end to end.

Tiny sizes for a few seconds: it checks that the tools run against a real node (and the bare
server), produce every JSON field the README documents, and see no errors. Measuring is for
tools/bench/RESULTS.md, not for tests.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tools.bench import strace_probe
from tools.bench.targets import spawn_bare, spawn_bare_sendfile

COMMON = ["--concurrency", "4", "--file_size", "1MiB", "--chunk-size", "256KiB", "--processes", "2",
          "--channels", "4"]
FIELDS = {"mode", "target", "config", "machine", "seconds", "bytes", "objects", "mb_per_s",
          "mib_per_s", "objects_per_s", "latency_s", "first_byte_s", "errors", "client", "node",
          "landing"}


def run_bench(module: str, addr: str, tmp_path, *extra: str) -> dict:
    out = tmp_path / f"{module}.json"
    proc = subprocess.run([sys.executable, "-m", f"tools.bench.{module}", "--addr", addr, *COMMON,
                           *extra, "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "shares this machine's" in proc.stdout  # the 2-core caveat is in the header
    report = json.loads(out.read_text())
    assert FIELDS <= set(report)
    assert report["errors"] == {}
    return report


def check_common(report: dict, objects: int, size: int) -> None:
    assert report["objects"] == objects and report["bytes"] == objects * size
    assert report["mb_per_s"] > 0 and report["latency_s"]["p50"] is not None
    assert report["landing"]["streams"] == 4 and report["landing"]["connections"] == 4
    assert report["client"]["cpu_seconds"] >= 0 and report["client"]["cpu_seconds_per_gb"] is not None


@pytest.mark.timeout(90)
def test_upload_and_download_against_a_node(node_factory, tmp_path):
    node = node_factory(workers=2)
    up = run_bench("upload_bench", node.addr, tmp_path, "--count", "2", "--sha256")
    check_common(up, 8, 1 << 20)
    assert up["target"]["kind"] == "node" and up["deleted"] == 8
    # The node was found by its listening port: both workers, with CPU and RSS.
    assert len(up["node"]["workers"]) == 2
    assert all(w["rss_peak_bytes"] > 0 for w in up["node"]["workers"])

    down = run_bench("download_bench", node.addr, tmp_path, "--count", "2", "--objects", "3")
    check_common(down, 8, 1 << 20)
    assert down["config"]["verify"] is True and down["first_byte_s"]["p50"] is not None
    assert down["config"]["cold_cache"] is False
    assert sum(down["landing"]["streams_per_worker"].values()) == 4
    cold = run_bench("download_bench", node.addr, tmp_path, "--objects", "3", "--cold-cache")
    check_common(cold, 4, 1 << 20)
    assert cold["config"]["cold_cache"] is True

    small = run_bench("upload_bench", node.addr, tmp_path, "--small", "--file_size", "16KiB",
                      "--duration", "1")
    assert small["durable_commits_per_s"] > 0 and small["objects"] > 0


@pytest.mark.timeout(60)
def test_download_and_upload_against_the_bare_server(tmp_path):
    with spawn_bare(workers=2, object_size=1 << 20, chunk_size=256 << 10, log_dir=str(tmp_path)) as bare:
        down = run_bench("download_bench", bare.addr, tmp_path, "--count", "2", "--object_id", "x")
        check_common(down, 8, 1 << 20)
        assert down["target"]["kind"] == "bare"
        assert len(down["node"]["workers"]) == 2  # found by the port it listens on
        up = run_bench("upload_bench", bare.addr, tmp_path, "--count", "1")
        check_common(up, 4, 1 << 20)


# -- compare: the node against bare gRPC, the verifying sink and the disk (tools.bench.compare) ----

@pytest.mark.timeout(90)
def test_compare_end_to_end_with_every_ceiling(tmp_path):
    out = tmp_path / "compare.json"
    small = ["--concurrency", "2", "--file_size", "1MiB", "--chunk-size", "256KiB", "--processes", "1",
             "--channels", "2"]  # one client process per phase: seven phases start theirs
    proc = subprocess.run([sys.executable, "-m", "tools.bench.compare", "--spawn-node", "--workers", "1",
                           *small, "--count", "1", "--objects", "2", "--modes", "upload,download,cold,small",
                           "--small-duration", "0.3", "--download-rounds", "2", "--data-root", str(tmp_path),
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    reports, disk = data["reports"], data["disk"]
    assert set(reports["bare"]) == {"upload", "download", "small"} and set(reports["verifying sink"]) == {"upload"}
    assert set(reports["reading source"]) == {"download"}
    assert set(reports["node"]) == {"upload", "download", "cold", "small"}
    for side in reports.values():
        for report in side.values():
            assert FIELDS <= set(report) and report["errors"] == {}
    # The cold phase: one distinct object per stream, page cache dropped, and the disk read
    # ceiling read exactly those objects' files.
    cold = reports["node"]["cold"]
    assert cold["machine"]["cache_drop"] in ("drop_caches", "fadvise", "none")
    assert cold["objects"] == 2 and cold["bytes"] == 2 << 20 and cold["landing"]["streams"] == 2
    assert disk["read"]["bytes"] == 2 << 20 and disk["read"]["cache_drop"]
    assert disk["write"]["bytes"] == 2 << 20 and disk["small"]["ops"] > 0
    assert reports["node"]["small"]["durable_commits_per_s"] > 0
    assert reports["bare"]["small"]["durable_commits_per_s"] > 0
    assert set(data["ratios"]) == {"upload_per_verifying_sink", "upload_per_min_bare_disk", "download_per_bare",
                                   "download_per_reading_source",
                                   "cold_per_min_bare_disk", "small_per_disk_loop", "small_per_min_bare_disk",
                                   "small_per_bare_then_disk",
                                   "upload_rss_per_bare_sink", "upload_rss_per_verifying_sink"}
    assert all(value > 0 for value in data["ratios"].values())
    assert "- cold_per_min_bare_disk:" in proc.stdout and "| cold download MB/s |" in proc.stdout
    assert "- small_per_min_bare_disk:" in proc.stdout
    bare_small = reports["bare"]["small"]["durable_commits_per_s"]
    in_turn = 1 / (1 / bare_small + 1 / disk["small"]["ops_per_s"])
    assert data["ratios"]["small_per_bare_then_disk"] == pytest.approx(
        reports["node"]["small"]["durable_commits_per_s"] / in_turn)
    # Warm downloads alternate bare, reading source and node; the reported ones are the median
    # round's (by node/bare).
    rounds = data["download_rounds"]
    assert len(rounds) == 2 and all(r["ratio"] > 0 and r["reading_mb_per_s"] > 0 for r in rounds)
    assert data["ratios"]["download_per_bare"] in [r["ratio"] for r in rounds]
    middle = next(r for r in rounds if r["ratio"] == data["ratios"]["download_per_bare"])
    assert data["ratios"]["download_per_reading_source"] == pytest.approx(
        middle["node_mb_per_s"] / middle["reading_mb_per_s"])
    assert "warm download, bare / reading source / node in each round" in proc.stdout
    assert "- download_per_reading_source:" in proc.stdout


def test_a_ratio_just_under_its_target_never_prints_as_the_target():
    from tools.bench.compare import _shown
    assert _shown(0.8975, 0.9) == "0.897"   # "0.90 (target >= 0.9: NOT met)" read as a contradiction
    assert _shown(1.2049, 1.2) == "1.205"
    assert _shown(0.92, 0.9) == "0.92" and _shown(0.9, 0.9) == "0.90"


# -- HTTP: the bare sendfile ceiling, node HTTP GET vs gRPC, tus (tools.bench.http_compare) ------

HTTP_PHASES = {"bare sendfile GET", "bare tus sink", "node HTTP GET", "node gRPC download",
               "node gRPC upload"}


@pytest.mark.timeout(150)
def test_http_compare_end_to_end(tmp_path):
    out = tmp_path / "http.json"
    trace = ["--strace", "--strace-seconds", "1"] if shutil.which("strace") else []
    proc = subprocess.run([sys.executable, "-m", "tools.bench.http_compare", "--spawn-node",
                           "--workers", "2", *COMMON, "--count", "2", "--objects", "2",
                           "--data-root", str(tmp_path), *trace, "--json", str(out)],
                          capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "shares this machine's" in proc.stdout
    data = json.loads(out.read_text())
    reports = data["reports"]
    assert HTTP_PHASES <= set(reports)
    # tus on the node: measured once the node serves it, else a reason why not.
    assert "node tus upload" in reports or "node tus upload" in data["notes"]
    for name, report in reports.items():
        assert FIELDS <= set(report), name
        assert report["errors"] == {}, name
        check_common(report, 8, 1 << 20)
        node = report["node"]
        assert len(node["workers"]) == 2, name           # CPU and RSS per worker
        assert all(w["rss_peak_bytes"] > 0 and "system_seconds" in w for w in node["workers"])
        assert node["cpu_seconds_per_gb"] is not None
    http = reports["node HTTP GET"]
    assert http["protocol"] == "http" and http["first_byte_s"]["p50"] is not None
    assert "unknown" not in http["landing"]["streams_per_worker"]   # every connection mapped
    ratios = data["ratios"]
    assert ratios["http_per_grpc_download"] > 0 and ratios["http_per_bare_sendfile"] > 0
    assert {"tus_per_grpc_upload", "tus_per_bare_sink"} <= set(ratios)
    assert "- http_per_grpc_download:" in proc.stdout      # the summary names every ratio
    if trace:
        assert data["strace"]["command"].startswith("strace -f")
        assert {"calls", "bytes", "errors", "client_bytes"} <= set(data["strace"])


@pytest.mark.timeout(60)
def test_http_bench_get_and_tus_against_the_bare_sendfile_server(tmp_path):
    with spawn_bare_sendfile(2, 1 << 20, str(tmp_path), log_dir=str(tmp_path)) as bare:
        for mode, extra in (("get", ["--path", "/a", "--path", "/b"]), ("tus", ["--file_size", "1MiB"])):
            out = tmp_path / f"{mode}.json"
            proc = subprocess.run([sys.executable, "-m", "tools.bench.http_bench", "--http",
                                   f"127.0.0.1:{bare.http_port}", "--mode", mode, "--concurrency", "4",
                                   "--count", "2", *extra, "--json", str(out)],
                                  capture_output=True, text=True, timeout=50)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            report = json.loads(out.read_text())
            assert FIELDS <= set(report) and report["errors"] == {}
            assert report["objects"] == 8 and report["bytes"] == 8 << 20
            assert len(report["node"]["workers"]) == 2


def test_strace_output_is_parsed():
    text = ("8014  sendfile(10, 9, [0] => [4291584], 67108864) = 4291584\n"
            "8014  sendfile(10, 9, [4291584], 62817280) = -1 EAGAIN (Resource temporarily unavailable)\n"
            "8015  sendfile(11, 9, [0] => [100], 100) = 100\n"
            "% time     seconds  usecs/call     calls    errors syscall\n"
            "100.00    0.002933          41         3         1 sendfile\n")
    got = strace_probe.parse(text)
    assert (got["calls"], got["errors"], got["bytes"]) == (3, 1, 4291684)
    assert got["errnos"] == {"EAGAIN": 1} and got["summary"].startswith("% time")
