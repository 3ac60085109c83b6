"""Aggregate the client processes' results into one report, and print it.

Why here: every figure the bench prints is defined in one place, so README.md can say what each
means and the JSON and the text never disagree.

* Throughput = bytes of completed objects / (last process end - first process start): the
  wall time of the whole timed phase, tail included. MB/s is 10^6 bytes/s, MiB/s 2^20.
* Latency per object: CreateUploadSession to UploadResponse (upload); request to last chunk
  (download). First byte: request to the first DownloadChunk. Percentiles are nearest-rank.
* Errors: counted per object by gRPC status code name, or CLIENT_* for a failed client check.
* CPU: client = the client processes' own user+system seconds during the timed phase;
  node = its workers' over the same phase; both also per GB moved (10^9 bytes).
* Landing: which worker each connection reached (GetNodeInfo.worker_id) and how many streams
  that put on each worker.
"""

from __future__ import annotations

import collections
import math

from tools.bench.cli import BenchConfig, format_size
from tools.bench.driver import ProcessResult

MB, MiB, GB = 1e6, 1024 ** 2, 1e9


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: list[float]) -> dict:
    return {"count": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values) if values else None}


def landing(results: list[ProcessResult]) -> dict:
    streams: collections.Counter[str] = collections.Counter()
    connections: collections.Counter[str] = collections.Counter()
    for r in results:
        for ch in r.channels:
            key = f"worker{ch['worker_id']}" if ch["worker_id"] is not None else "unknown"
            connections[key] += 1
            streams[key] += ch["streams"]
    return {"connections": sum(connections.values()), "streams": sum(streams.values()),
            "streams_per_worker": dict(sorted(streams.items())),
            "connections_per_worker": dict(sorted(connections.items()))}


def aggregate(cfg: BenchConfig, results: list[ProcessResult], node: dict, target: dict,
              machine: dict) -> dict:
    """The report: one JSON-able dict (see the module doc for every figure)."""
    ok = [r for r in results if not r.failure]
    start = min((r.start for r in ok), default=0.0)
    end = max((r.end for r in ok), default=0.0)
    seconds = max(end - start, 1e-9)
    moved = sum(r.bytes for r in ok)
    objects = sum(r.objects for r in ok)
    errors: collections.Counter[str] = collections.Counter()
    samples: list[str] = []
    for r in ok:
        errors.update(r.errors)
        samples += r.error_samples
    for r in results:
        if r.failure:
            errors["CLIENT_PROCESS_FAILED"] += 1
            samples.append(r.failure.strip().splitlines()[-1])
    client_cpu = sum(r.cpu_seconds for r in ok)
    node_cpu = node.get("cpu_seconds")
    gigabytes = moved / GB
    rss_peak = max((r.rss_peak_bytes for r in ok), default=0)
    report = {
        "mode": cfg.mode + (" (small objects)" if cfg.small else ""),
        "target": target,
        "config": {
            "concurrency": cfg.concurrency, "file_size": cfg.file_size, "chunk_size": cfg.chunk_size,
            "channels": cfg.effective_channels, "processes": cfg.processes, "count": cfg.count,
            "duration": cfg.duration, "verify": cfg.verify if cfg.mode == "download" else None,
            "cold_cache": cfg.cold_cache if cfg.mode == "download" else None,
            "send_sha256": cfg.send_sha256 if cfg.mode == "upload" else None,
            "upload_calls": upload_calls(cfg),
            "object_id": cfg.object_id or None,
            "channel_args": [list(a) for a in cfg.channel_args],
            "node_env": list(cfg.node_env),
        },
        "machine": machine,
        "seconds": seconds,
        "bytes": moved,
        "objects": objects,
        "mb_per_s": moved / seconds / MB,
        "mib_per_s": moved / seconds / MiB,
        "objects_per_s": objects / seconds,
        "latency_s": summary([x for r in ok for x in r.latencies]),
        "first_byte_s": summary([x for r in ok for x in r.first_byte]) if cfg.mode == "download" else None,
        "errors": dict(sorted(errors.items())),
        "error_samples": samples[:10],
        "client": {"processes": len(results), "cpu_seconds": client_cpu,
                   "rss_peak_bytes_max": rss_peak,
                   "cores": client_cpu / seconds,
                   "cpu_seconds_per_gb": client_cpu / gigabytes if gigabytes else None},
        "node": dict(node, cores=(node_cpu / seconds) if node_cpu is not None else None,
                     cpu_seconds_per_gb=(node_cpu / gigabytes) if node_cpu is not None and gigabytes else None),
        "landing": landing(ok),
    }
    if cfg.small:
        report["durable_commits_per_s"] = objects / seconds
    return report


def upload_calls(cfg: BenchConfig) -> str | None:
    """How an upload run stores each object: "put" (one PutObject call) or "session"."""
    if cfg.mode != "upload":
        return None
    return "put" if cfg.one_call_put else "session"


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1:
        return f"{value:.2f} s"
    return f"{value * 1000:.1f} ms"


def _dist(d: dict) -> str:
    return "  ".join(f"{k} {_fmt_s(d[k])}" for k in ("p50", "p90", "p99", "max"))


def _cold_cache_note(cfg: BenchConfig, machine: dict) -> str:
    how = machine.get("cache_drop", "none")
    note = (f", page cache cold (dropped by {how} before the timed phase)" if how != "none" else
            ", page cache NOT dropped (that needs root): only a working set larger than memory is cold")
    reads = cfg.objects_per_stream
    if cfg.object_id or reads is None or cfg.objects < cfg.concurrency * reads:
        note += ", streams share objects (a second read of one may find it cached)"
    else:
        note += f", {cfg.concurrency * reads} distinct objects, each read once"
    return note


def header(cfg: BenchConfig, target: dict, machine: dict) -> str:
    per = (f"{cfg.objects_per_stream} object(s) per stream" if cfg.duration is None else
           f"new objects for {cfg.duration:g} s" + (f" (at most {cfg.count} per stream)" if cfg.count else ""))
    lines = [
        f"mini-oss {cfg.mode} bench -> {target.get('kind', '?')} at {target.get('addr')} "
        f"({target.get('version', '?')}, {target.get('workers', '?')} workers)",
        f"{cfg.concurrency} streams x {per} of {format_size(cfg.file_size)}, "
        f"{format_size(cfg.chunk_size)} chunks, {cfg.effective_channels} channels, "
        f"{cfg.processes} client processes"
        + (", verification " + ("ON (CRC-32 per chunk, SHA-256 per object)" if cfg.verify else "OFF")
           + (_cold_cache_note(cfg, machine) if cfg.cold_cache
              else ", page cache warmed (two untimed reads per object)")
           if cfg.mode == "download" else
           ", CRC-32 on every chunk, distinct contents per object"
           + (", SHA-256 sent" if cfg.send_sha256 else "")
           + (", one PutObject call per object" if cfg.one_call_put
              else ", a session and an Upload stream per object")),
        f"NOTE: the load generator shares this machine's {machine.get('nproc')} cores "
        f"({machine.get('cpu_model')}) with the server: its CPU (below) is taken from the server.",
    ]
    return "\n".join(lines)


def render(report: dict, cfg: BenchConfig) -> str:
    node, client, land = report["node"], report["client"], report["landing"]
    lines = [header(cfg, report["target"], report["machine"]), ""]
    lines.append(f"throughput     {report['mb_per_s']:9.1f} MB/s  ({report['mib_per_s']:.1f} MiB/s)"
                 f"   {format_size(report['bytes'])} in {report['seconds']:.2f} s")
    lines.append(f"objects        {report['objects']} ({report['objects_per_s']:.2f}/s)")
    if "durable_commits_per_s" in report:
        lines.append(f"durable commits {report['durable_commits_per_s']:.1f}/s")
    lines.append(f"latency/object {_dist(report['latency_s'])}")
    if report.get("first_byte_s"):
        lines.append(f"first byte     {_dist(report['first_byte_s'])}")
    errors = report["errors"]
    lines.append("errors         " + (", ".join(f"{k}={v}" for k, v in errors.items()) if errors else "none"))
    for sample in report["error_samples"][:3]:
        lines.append(f"               e.g. {sample}")
    per_worker = " ".join(f"{k}={v}" for k, v in land["streams_per_worker"].items())
    lines.append(f"landing        {land['streams']} streams over {land['connections']} connections: {per_worker}")
    per_gb = client["cpu_seconds_per_gb"]
    lines.append(f"client CPU     {client['cpu_seconds']:.1f} s ({client['cores']:.2f} cores)"
                 + (f", {per_gb:.2f} CPU-s per GB moved" if per_gb is not None else "")
                 + f"; RSS peak {client['rss_peak_bytes_max'] / MiB:.0f} MiB per process")
    if node.get("cpu_seconds") is not None:
        per_gb = node["cpu_seconds_per_gb"]
        lines.append(f"node CPU       {node['cpu_seconds']:.1f} s ({node['cores']:.2f} cores)"
                     + (f", {per_gb:.2f} CPU-s per GB" if per_gb is not None else ""))
        for w in node["workers"]:
            lines.append(f"  {w['label']:<12} cpu {w['cpu_seconds']:6.1f} s   rss peak "
                         f"{w['rss_peak_bytes'] / MiB:7.1f} MiB   last {w['rss_last_bytes'] / MiB:7.1f} MiB")
    else:
        lines.append(f"node CPU       unknown: {node.get('found')}")
    if node.get("machine_busy_fraction") is not None:
        lines.append(f"machine        {node['machine_busy_fraction'] * 100:.0f}% busy over "
                     f"{node['machine_cores']} cores")
    return "\n".join(lines)
