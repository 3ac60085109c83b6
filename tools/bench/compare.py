"""`python -m tools.bench.compare`: the node as a fraction of the bare-gRPC ceiling, in one session.

Why: the machines are noisy and the load generator shares their cores, so a node figure is only
meaningful next to the ceiling measured minutes apart with the same flags. This runs, in order:

1. the bare server (tools.bench.bare_server, `--workers` processes): upload, then download;
2. the node (started here with `--spawn-node` on a temp data dir with default settings and
   `--workers`, or the one at `--addr`): upload, then download;

with `os.sync()` before every timed phase (so one phase's dirty pages are not written back
during the next), then prints both and the ratios node/bare for throughput (upload ratio,
download ratio). The upload run's objects are deleted afterwards; the download run fetches
`--objects` objects (made untimed if missing). `--json PATH` writes every report and the ratios.
"""

from __future__ import annotations

import json
import sys

from tools.bench import runner, targets
from tools.bench.cli import COLD_CACHE_HELP, build_parser, config_from_args, format_size


def _parser():
    p = build_parser("upload", __doc__.splitlines()[0])
    p.prog = "python -m tools.bench.compare"
    p.add_argument("--objects", type=int, default=8,
                   help="download: distinct objects every stream picks from (default %(default)s)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="download: skip the client's CRC-32 and SHA-256 checks")
    p.add_argument("--cold-cache", action="store_true", help=COLD_CACHE_HELP)
    p.add_argument("--modes", default="upload,download", help="which benches (default %(default)s)")
    return p


def _phase(cfg, mode: str, addr: str, pid: int, labels: dict, objects: int, verify: bool) -> dict:
    run_cfg = cfg.replace(mode=mode, addr=addr, spawn="", objects=objects, verify=verify,
                          json_path="", run_id="")
    print(f"\n=== {mode} ===", flush=True)
    return runner.run_bench(run_cfg, node_pid=pid, labels=labels, sync=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    runner.stop_cleanly_on_signals()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    cfg = config_from_args("upload", args).replace(cold_cache=args.cold_cache)
    reports: dict[str, dict[str, dict]] = {"bare": {}, "node": {}}

    print(f"compare: bare gRPC ceiling vs node, {cfg.workers} workers each", flush=True)
    with targets.spawn_bare(cfg.workers, cfg.file_size, cfg.chunk_size) as bare:
        print(f"\n##### bare server (pid {bare.pid}) at {bare.addr}", flush=True)
        for mode in modes:
            reports["bare"][mode] = _phase(cfg, mode, bare.addr, bare.pid, bare.worker_labels(),
                                           args.objects, args.verify)
    if cfg.spawn == "node":
        node = targets.spawn_node(cfg.workers, cfg.data_root, node_root=cfg.node_root,
                                  env=cfg.node_env_dict)
    else:
        node = None
    try:
        addr = node.addr if node else cfg.addr
        pid = node.pid if node else cfg.node_pid
        labels = node.worker_labels() if node else {}
        print(f"\n##### node{f' (pid {pid})' if pid else ''} at {addr}", flush=True)
        for mode in modes:
            reports["node"][mode] = _phase(cfg, mode, addr, pid, labels, args.objects, args.verify)
    finally:
        if node is not None:
            node.stop()

    ratios = {mode: reports["node"][mode]["mb_per_s"] / reports["bare"][mode]["mb_per_s"]
              for mode in modes if reports["bare"][mode]["mb_per_s"]}
    print("\n##### summary: node / bare-gRPC ceiling "
          f"({cfg.concurrency} streams x {format_size(cfg.file_size)}, {format_size(cfg.chunk_size)} chunks, "
          f"{cfg.effective_channels} channels, {cfg.processes} client processes, {cfg.workers} workers)")
    print(f"{'':10} {'bare MB/s':>10} {'node MB/s':>10} {'ratio':>7}  {'node p50':>9} {'node p99':>9}  errors")
    for mode in modes:
        b, n = reports["bare"][mode], reports["node"][mode]
        errs = sum(b["errors"].values()) + sum(n["errors"].values())
        print(f"{mode:10} {b['mb_per_s']:10.1f} {n['mb_per_s']:10.1f} {ratios.get(mode, 0):7.2f}  "
              f"{n['latency_s']['p50'] or 0:8.2f}s {n['latency_s']['p99'] or 0:8.2f}s  {errs}")
    print("ratios: " + ", ".join(f"{mode} {ratio:.2f}" for mode, ratio in ratios.items()))
    if cfg.json_path:
        with open(cfg.json_path, "w") as fh:
            json.dump({"reports": reports, "ratios": ratios}, fh, indent=2, sort_keys=True)
    return 1 if any(r["errors"] for side in reports.values() for r in side.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
