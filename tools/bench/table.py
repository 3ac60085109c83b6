"""`python -m tools.bench.table A.json B.json ...`: compare JSON files -> the RESULTS.md table.

Why: RESULTS.md should hold exactly what the runs wrote, not figures copied by hand. Each file
is a `compare --json` output; one row per (file, target, mode).
"""

from __future__ import annotations

import json
import sys

MiB = 1024 ** 2
#: The ratio shown on a node row: against the ceiling the issue's target names for that mode.
RATIO_OF_MODE = {"upload": "upload_per_verifying_sink", "download": "download_per_bare",
                 "cold": "cold_per_min_bare_disk", "small": "small_per_disk_loop"}


def _ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2f} s" if value >= 1 else f"{value * 1000:.0f} ms")


def rows(path: str) -> list[str]:
    with open(path) as fh:
        data = json.load(fh)
    out = []
    for side in ("bare", "verifying sink", "reading source", "node"):
        reports = data["reports"].get(side, {})
        for mode in sorted(reports, key=lambda m: (m != "upload", m)):
            r = reports[mode]
            cfg, node, client = r["config"], r["node"], r["client"]
            # Older files hold node/bare per mode; newer ones the issue-13 figures (compare.ratios).
            ratio = (data["ratios"].get(mode, data["ratios"].get(RATIO_OF_MODE.get(mode, "")))
                     if side == "node" else None)
            rss = " / ".join(f"{w['rss_peak_bytes'] / MiB:.0f}" for w in node.get("workers", []))
            first = r.get("first_byte_s") or {}
            errors = sum(r["errors"].values())
            land = " ".join(f"{k[6:]}:{v}" for k, v in r["landing"]["streams_per_worker"].items())
            out.append(
                f"| {cfg['processes']} | {cfg['channels']} | {side} | {mode} | {r['mb_per_s']:.0f} | "
                f"{r['mib_per_s']:.0f} | {'' if ratio is None else f'**{ratio:.2f}**'} | "
                f"{_ms(r['latency_s']['p50'])} | {_ms(r['latency_s']['p99'])} | {_ms(first.get('p50'))} | "
                f"{(node.get('cores') or 0):.2f} ({(node.get('cpu_seconds_per_gb') or 0):.2f}) | {rss} | "
                f"{client['cores']:.2f} ({(client['cpu_seconds_per_gb'] or 0):.2f}) | {land} | {errors} |")
    return out


HEADER = ("| client procs | channels | target | mode | MB/s | MiB/s | node/ceiling | p50 | p99 | first byte p50 | "
          "server cores (CPU-s/GB) | server RSS peak per worker, MiB | client cores (CPU-s/GB) | "
          "streams per worker | errors |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def main(argv: list[str]) -> int:
    print(HEADER)
    for path in argv:
        for row in rows(path):
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
