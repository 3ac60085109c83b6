"""`python -m tools.bench.http_bench`: one HTTP phase (GET or tus) against any HTTP server.

Why: http_compare runs every phase in one session; this is one of them on its own, against a
node's HTTP port, the bare sendfile server, or anything speaking HTTP/1.1 (the objects must
exist: pass their paths). Examples:

    python -m tools.bench.http_bench --http 127.0.0.1:8081 --path /v1/objects/a --path /v1/objects/b
    python -m tools.bench.http_bench --http 127.0.0.1:8081 --mode tus --file_size 64MiB --duration 10
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys

from tools.bench.cli import parse_size
from tools.bench.http_client import HttpLoad
from tools.bench.http_runner import run_phase
from tools.bench.runner import stop_cleanly_on_signals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench.http_bench", description=__doc__.splitlines()[0])
    p.add_argument("--http", default="127.0.0.1:8081", help="HOST:PORT of the HTTP server")
    p.add_argument("--mode", choices=("get", "tus"), default="get")
    p.add_argument("--path", action="append", default=[], help="get: a path to fetch (repeatable)")
    p.add_argument("--tus-path", default="/v1/tus/", help="tus: the creation URL path")
    p.add_argument("--concurrency", type=int, default=100, help="streams = keep-alive connections")
    p.add_argument("--processes", type=int, default=2, help="client processes")
    p.add_argument("--file_size", "--file-size", type=parse_size, default=64 * 1024 ** 2, help="tus: object size")
    p.add_argument("--chunk-size", type=parse_size, default=1024 ** 2, help="tus: bytes per send")
    p.add_argument("--count", type=int, default=None, help="objects per stream (default 1)")
    p.add_argument("--duration", type=float, default=None, help="seconds: streams start new objects until then")
    p.add_argument("--pid", type=int, default=None, help="the server's supervisor pid (default: by port)")
    p.add_argument("--json", default="", metavar="PATH", help="also write the report as JSON")
    args = p.parse_args(argv)
    if args.mode == "get" and not args.path:
        p.error("--mode get needs at least one --path")
    stop_cleanly_on_signals()
    host, port = args.http.rsplit(":", 1)
    count = args.count if args.count is not None else (None if args.duration else 1)
    load = HttpLoad(mode=args.mode, host=host, port=int(port), paths=tuple(args.path),
                    file_size=args.file_size, chunk_size=args.chunk_size, count=count,
                    duration=args.duration, run_id=secrets.token_hex(3), tus_path=args.tus_path)
    report = run_phase(load, concurrency=args.concurrency, processes=args.processes, pid=args.pid,
                       labels={}, kind="http")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2, sort_keys=True)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
