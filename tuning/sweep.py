"""Bench every tuning profile against one bare-gRPC ceiling and write a results table.

    python -m tuning.sweep [--profiles NAME ...] [--concurrency 100] [--file_size 256MiB]
                           [--processes 2] [--channels 16] [--workers 2]

The ceiling (tools.bench.bare_server) is measured once, upload then download; each profile then
gets its own freshly started node (`--spawn-node`, the profile passed as MINI_OSS_CONFIG) and
the same upload and download benches. Results go to tuning/results/<timestamp>.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import subprocess
import sys
import tempfile

from node import config

HERE = pathlib.Path(__file__).resolve().parent
PROFILES = HERE / "profiles"


def profile_paths(names: list[str] | None) -> dict[str, pathlib.Path]:
    paths = {p.stem: p for p in sorted(PROFILES.glob("*.toml"))}
    if names:
        missing = [n for n in names if n not in paths]
        if missing:
            raise SystemExit(f"no such profile: {', '.join(missing)} (have: {', '.join(paths)})")
        paths = {n: paths[n] for n in names}
    for path in paths.values():
        config.load(config_file=str(path), environ={})  # refuse a profile the node would refuse
    return paths


def bench(mode: str, common: list[str], out: pathlib.Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", f"tools.bench.{mode}_bench", *common, "--json", str(out), *extra]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def row(name: str, result: dict, ceiling: dict | None) -> str:
    workers = result.get("node", {}).get("workers", [])
    rss = " / ".join(f"{w['rss_peak_bytes'] / 2**20:.0f}" for w in workers) or "-"
    ratio = f"{result['mb_per_s'] / ceiling['mb_per_s']:.2f}" if ceiling else ""
    lat = result["latency_s"]
    return (f"| {name} | {result['mode']} | {result['mb_per_s']:.0f} | {ratio} | {lat['p50']:.2f} s | "
            f"{lat['p99']:.2f} s | {rss} | {result.get('node', {}).get('cpu_seconds_per_gb', 0):.2f} | "
            f"{sum(result['errors'].values()) if result['errors'] else 0} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", nargs="*", help="profile names (default: all)")
    parser.add_argument("--concurrency", default="100")
    parser.add_argument("--file_size", "--file-size", default="256MiB")
    parser.add_argument("--processes", default="2")
    parser.add_argument("--channels", default="16")
    parser.add_argument("--workers", default="2")
    args = parser.parse_args(argv)
    profiles = profile_paths(args.profiles)
    common = ["--concurrency", args.concurrency, "--file_size", args.file_size,
              "--processes", args.processes, "--channels", args.channels, "--workers", args.workers]
    rows: list[str] = []
    machine: dict = {}
    with tempfile.TemporaryDirectory(prefix="mini-oss-sweep-") as tmp:
        scratch = pathlib.Path(tmp)
        ceiling = {mode: bench(mode, common, scratch / f"bare-{mode}.json", ["--spawn-bare"])
                   for mode in ("upload", "download")}
        machine = ceiling["upload"]["machine"]
        for mode in ("upload", "download"):
            rows.append(row("bare gRPC", ceiling[mode], None))
        for name, path in profiles.items():
            for mode in ("upload", "download"):
                result = bench(mode, common, scratch / f"{name}-{mode}.json",
                               ["--spawn-node", "--node-env", f"MINI_OSS_CONFIG={path}"])
                rows.append(row(name, result, ceiling[mode]))
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
    out = HERE / "results" / f"{stamp}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join([
        f"# Sweep {stamp}", "",
        f"Machine: nproc {machine.get('nproc')}, {machine.get('cpu_model')}, "
        f"{machine.get('memory_bytes', 0) / 2**30:.0f} GiB, {machine.get('platform')}; Python "
        f"{machine.get('python')}, grpcio {machine.get('grpcio')}, protobuf {machine.get('protobuf')}. "
        "The load generator shares the same cores.", "",
        f"Command: `python -m tuning.sweep {' '.join(argv if argv is not None else sys.argv[1:])}` "
        f"({args.concurrency} streams of {args.file_size}, {args.processes} client processes, "
        f"{args.channels} channels, {args.workers} workers; downloads verified).", "",
        "| profile | mode | MB/s | ratio to bare | p50 | p99 | node RSS peak per worker, MiB | node CPU-s/GB | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows, ""]))
    print(out.read_text())
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
