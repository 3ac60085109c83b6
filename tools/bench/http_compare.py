"""`python -m tools.bench.http_compare`: the node's HTTP face against its gRPC and a bare sender.

Why: issue 12 asks for ratios measured in one run on one machine state: node HTTP GET against
the node's gRPC download (>= 3x) and against a bare sendfile sender (>= 0.6x), and tus uploads
against gRPC uploads (>= 0.8x), with the node's CPU per GB and RSS per worker, and the load
generator's own CPU (it shares the 2 cores). In order, `--modes download,upload`:

1. bare sendfile server (tools.bench.bare_sendfile, `--workers` processes, one warm file of
   `--file_size`): HTTP GET; with `upload`, tus into its sink (the client's ceiling).
2. the node (`--spawn-node`: a temp data dir, default settings, `--workers`; or `--addr`):
   `--objects` objects made and read once (untimed: warm), then HTTP GET of them;
   with `--strace`, a short extra GET phase with strace on every worker (strace_probe);
   then the gRPC download bench on the same objects (runner.run_bench, `--no-verify` unless
   `--verify`: the HTTP client checks lengths only, so both sides do the same work);
3. tus upload (if the node answers `OPTIONS <tus path>`; else reported as not served), then
   the gRPC upload bench; uploaded objects are deleted after each phase, untimed.

Every phase is os.sync()ed before it starts. `--json PATH` writes every report, the ratios and
the strace figures; `--table PATH` prints the table of such a file (RESULTS.md).
"""

from __future__ import annotations

import json
import secrets
import sys
import urllib.error
import urllib.request

from tools.bench import runner, strace_probe, targets
from tools.bench.cli import build_parser, config_from_args, format_size
from tools.bench.http_client import HttpLoad
from tools.bench.http_runner import run_phase

MiB, GB = 1024 ** 2, 1e9
#: Run order, also the table's (a JSON file has its keys sorted).
PHASES = ("bare sendfile GET", "bare tus sink", "node HTTP GET", "node gRPC download", "node tus upload",
          "node gRPC upload")
TARGETS = {"http_per_grpc_download": 3.0, "http_per_bare_sendfile": 0.6, "tus_per_grpc_upload": 0.8}


def _parser():
    p = build_parser("upload", __doc__.splitlines()[0])
    p.prog = "python -m tools.bench.http_compare"
    p.add_argument("--modes", default="download,upload", help="download and/or upload (default %(default)s)")
    p.add_argument("--objects", type=int, default=4, help="distinct warm objects the GETs cycle over")
    p.add_argument("--verify", action="store_true", help="gRPC download: check CRC-32 and SHA-256 too")
    p.add_argument("--http-processes", type=int, default=None,
                   help="HTTP client processes (default: --processes)")
    p.add_argument("--strace", action="store_true",
                   help="an extra short GET phase with `strace -f -e trace=sendfile` on every node worker")
    p.add_argument("--strace-seconds", type=float, default=5.0, help="length of that phase")
    p.add_argument("--tus-path", default="/v1/tus/", help="the node's tus creation URL path")
    p.add_argument("--table", metavar="JSON", help="only print the table of an earlier --json file")
    return p


class Session:
    """The run's settings and everything measured so far."""

    def __init__(self, args) -> None:
        self.args = args
        self.cfg = config_from_args("upload", args)
        self.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        self.http_processes = args.http_processes or self.cfg.processes
        self.reports: dict[str, dict] = {}
        self.notes: dict[str, str] = {}
        self.strace: dict | None = None

    def load(self, mode: str, port: int, **kw) -> HttpLoad:
        cfg = self.cfg
        return HttpLoad(mode=mode, host="127.0.0.1", port=port, file_size=cfg.file_size,
                        chunk_size=cfg.chunk_size, count=cfg.objects_per_stream, duration=cfg.duration,
                        run_id=secrets.token_hex(3), **kw)

    def http(self, name: str, load: HttpLoad, pid: int | None, labels: dict, kind: str) -> dict:
        print(f"\n=== {name} ===", flush=True)
        report = run_phase(load, concurrency=self.cfg.concurrency, processes=self.http_processes,
                           pid=pid, labels=labels, kind=kind)
        self.reports[name] = report
        return report

    def grpc(self, name: str, mode: str, addr: str, pid: int | None, labels: dict) -> dict:
        print(f"\n=== {name} ===", flush=True)
        run_cfg = self.cfg.replace(mode=mode, addr=addr, spawn="", objects=self.args.objects,
                                   verify=self.args.verify, json_path="", run_id="")
        self.reports[name] = runner.run_bench(run_cfg, node_pid=pid, labels=labels, sync=True)
        return self.reports[name]


def bare_phases(s: Session) -> None:
    cfg = s.cfg
    with targets.spawn_bare_sendfile(cfg.workers, cfg.file_size, cfg.data_root) as bare:
        print(f"\n##### bare sendfile server (pid {bare.pid}) at 127.0.0.1:{bare.http_port}", flush=True)
        labels = bare.worker_labels()
        if "download" in s.modes:
            s.http("bare sendfile GET", s.load("get", bare.http_port, paths=("/bench.bin",)),
                   bare.pid, labels, "bare-sendfile")
        if "upload" in s.modes:
            s.http("bare tus sink", s.load("tus", bare.http_port), bare.pid, labels, "bare-sendfile")


def node_phases(s: Session, addr: str, http_port: int, pid: int | None, labels: dict) -> None:
    cfg, args = s.cfg, s.args
    if "download" in s.modes:
        dl_cfg = cfg.replace(mode="download", addr=addr, objects=args.objects)
        ids, _size, _shas = runner.prepare_downloads(dl_cfg, runner.describe_target(addr))
        paths = tuple(f"/v1/objects/{oid}" for oid in ids)
        s.http("node HTTP GET", s.load("get", http_port, paths=paths), pid, labels, "node")
        if args.strace:
            strace_phase(s, http_port, pid, labels, paths)
        s.grpc("node gRPC download", "download", addr, pid, labels)
    if "upload" in s.modes:
        served = tus_served(http_port, args.tus_path)
        if served is True:
            report = s.http("node tus upload", s.load("tus", http_port, tus_path=args.tus_path),
                            pid, labels, "node")
            report["deleted"] = len(report["committed"]) - runner.delete_objects(addr, report["committed"])
        else:
            s.notes["node tus upload"] = served
            print(f"\n=== node tus upload: skipped: {served}", flush=True)
        s.grpc("node gRPC upload", "upload", addr, pid, labels)


def strace_phase(s: Session, http_port: int, pid: int | None, labels: dict, paths: tuple) -> None:
    from tools.bench import procmetrics

    if not strace_probe.available():
        s.notes["strace"] = "strace is not installed"
        return
    workers = procmetrics.find_node(http_port, pid).pids
    probe = strace_probe.Probe(workers)
    print(f"\n=== strace (not a measurement: traced workers are slow): {probe.command} "
          f"on {len(workers)} workers", flush=True)
    load = s.load("get", http_port, paths=paths)
    load = HttpLoad(**{**load.__dict__, "count": None, "duration": s.args.strace_seconds})
    try:
        report = run_phase(load, concurrency=s.cfg.concurrency, processes=s.http_processes,
                           pid=pid, labels=labels, kind="node (traced)", quiet=True)
    finally:
        s.strace = probe.stop()
    s.strace["client_bytes"] = report["bytes"]
    s.strace["client_objects"] = report["objects"]
    print(format_strace(s.strace), flush=True)


def tus_served(http_port: int, path: str) -> bool | str:
    """True if the node answers the tus OPTIONS request, else why not."""
    request = urllib.request.Request(f"http://127.0.0.1:{http_port}{path}", method="OPTIONS",
                                     headers={"Tus-Resumable": "1.0.0"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.headers.get("Tus-Version"):
                return True
            return f"OPTIONS {path} answered {response.status} without Tus-Version"
    except urllib.error.HTTPError as exc:
        return f"the node does not serve tus at {path} yet (OPTIONS answered {exc.code})"
    except OSError as exc:
        return f"OPTIONS {path} failed: {exc}"


def format_strace(st: dict) -> str:
    lines = [f"strace: {st['command']}",
             f"strace: {st['calls']} sendfile calls ({st['errors']} failed), {st['bytes']} bytes sent "
             f"by sendfile; the client received {st['client_bytes']} bytes "
             f"({st['client_objects']} whole objects) in the same phase"]
    for w in st["workers"]:
        lines.append(f"  pid {w['pid']}: {w['calls']} calls, {w['bytes']} bytes, errors {w['errnos']}")
        lines += ["    " + line for line in w["summary"].splitlines()]
    return "\n".join(lines)


def ratios(reports: dict[str, dict]) -> dict[str, float | None]:
    def ratio(a: str, b: str) -> float | None:
        if a in reports and b in reports and reports[b]["mb_per_s"]:
            return reports[a]["mb_per_s"] / reports[b]["mb_per_s"]
        return None
    return {"http_per_grpc_download": ratio("node HTTP GET", "node gRPC download"),
            "http_per_bare_sendfile": ratio("node HTTP GET", "bare sendfile GET"),
            "tus_per_grpc_upload": ratio("node tus upload", "node gRPC upload"),
            "tus_per_bare_sink": ratio("node tus upload", "bare tus sink")}


def table(data: dict) -> str:
    """The markdown table of one run (every figure from the reports)."""
    rows = ["| phase | MB/s | p50 | p99 | errors | server cores | server CPU-s/GB (user+sys) | "
            "RSS peak per worker, MiB | client cores | client CPU-s/GB | streams per worker |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = list(PHASES)
    for name, r in sorted(data["reports"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99):
        node, client = r["node"], r["client"]
        users = sum(w.get("user_seconds", 0) for w in node["workers"])
        systems = sum(w.get("system_seconds", 0) for w in node["workers"])
        gb = r["bytes"] / GB or 1e-9
        rss = " / ".join(f"{w['rss_peak_bytes'] / MiB:.0f}" for w in node["workers"])
        land = " ".join(f"{k[6:] if k.startswith('worker') else k}:{v}"
                        for k, v in r["landing"]["streams_per_worker"].items())
        lat = r["latency_s"]
        rows.append(
            f"| {name} | {r['mb_per_s']:.0f} | {_s(lat['p50'])} | {_s(lat['p99'])} | "
            f"{sum(r['errors'].values())} | {node['cores'] or 0:.2f} | "
            f"{node['cpu_seconds_per_gb'] or 0:.2f} ({users / gb:.2f}+{systems / gb:.2f}) | {rss} | "
            f"{client['cores']:.2f} | {client['cpu_seconds_per_gb'] or 0:.2f} | {land} |")
    for name, why in data.get("notes", {}).items():
        rows.append(f"| {name} | skipped: {why} | | | | | | | | | |")
    out = ["\n".join(rows), ""]
    for key, value in data["ratios"].items():
        goal = TARGETS.get(key)
        verdict = "" if value is None or goal is None else (" (target >= %.1f: %s)" % (goal, "met" if value >= goal else "NOT met"))
        out.append(f"- {key}: {'-' if value is None else f'{value:.2f}'}{verdict}")
    return "\n".join(out)


def _s(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2f} s" if value >= 1 else f"{value * 1000:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.table:
        with open(args.table) as fh:
            print(table(json.load(fh)))
        return 0
    runner.stop_cleanly_on_signals()
    s = Session(args)
    cfg = s.cfg
    print(f"http_compare: bare sendfile vs node HTTP vs node gRPC, {cfg.workers} workers, "
          f"{cfg.concurrency} streams x {format_size(cfg.file_size)}", flush=True)
    bare_phases(s)
    node = targets.spawn_node(cfg.workers, cfg.data_root, node_root=cfg.node_root,
                              env=cfg.node_env_dict) if cfg.spawn == "node" else None
    try:
        addr = node.addr if node else cfg.addr
        pid = node.pid if node else cfg.node_pid
        http_port = node.http_port if node else node_http_port(addr)
        labels = node.worker_labels() if node else {}
        print(f"\n##### node{f' (pid {pid})' if pid else ''} at {addr}, HTTP :{http_port}", flush=True)
        node_phases(s, addr, http_port, pid, labels)
    finally:
        if node is not None:
            node.stop()
    data = {"reports": s.reports, "ratios": ratios(s.reports), "notes": s.notes, "strace": s.strace,
            "command": " ".join(["python -m tools.bench.http_compare", *(argv or sys.argv[1:])])}
    print(f"\n##### summary ({cfg.concurrency} streams x {format_size(cfg.file_size)}, "
          f"{cfg.workers} workers, {s.http_processes} HTTP / {cfg.processes} gRPC client processes)")
    print(table(data))
    if s.strace:
        print(format_strace(s.strace))
    if cfg.json_path:
        with open(cfg.json_path, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
    return 1 if any(r["errors"] for r in s.reports.values()) else 0


def node_http_port(addr: str) -> int:
    """The HTTP port of a running node (GetNodeInfo.http_port)."""
    from node.pb import oss_pb2

    channel, stub = runner._stub(addr)  # noqa: SLF001 - the runner's one channel helper
    with channel:
        info = stub.GetNodeInfo(oss_pb2.GetNodeInfoRequest(), wait_for_ready=True, timeout=30)
    if not info.http_port:
        raise SystemExit(f"bench: the node at {addr} serves no HTTP (--http-listen '')")
    return info.http_port


if __name__ == "__main__":
    sys.exit(main())
