"""Run one HTTP phase (GET downloads or tus uploads) and report it like the gRPC benches.

Why a runner of its own: the gRPC runner's client processes are grpc.aio loops; the HTTP ones
are raw-socket epoll loops (tools.bench.http_client) with another hand-shake (they report
their local ports, so connections can be mapped to the server's workers). Everything after the
run is shared: `stats.aggregate` defines every figure, `procmetrics.Sampler` measures the
target's workers, so an HTTP row and a gRPC row mean the same things.

Sequence: find the target's workers (the processes listening on the HTTP port, children of
`pid`); os.sync() so earlier phases' dirty pages are not written back during this one; start
`processes` client processes (spawn), each connecting its share of the streams (one keep-alive
connection per stream); map every connection to the worker that accepted it (the worker's
ESTABLISHED sockets, by the client's port: SO_REUSEPORT spreads connections unevenly); start
the sampler and release every process at once; aggregate.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import re
import time

import psutil

from tools.bench import procmetrics, stats
from tools.bench.cli import BenchConfig, format_size
from tools.bench.driver import ProcessResult
from tools.bench.http_client import RECV_BUFFER, HttpLoad, client_main
from tools.bench.runner import QUIET_CHECK_SECONDS, split, timed_phase

READY_TIMEOUT = 120.0
POLL = 1.0
LANDING_WAIT = 5.0


def bench_config(load: HttpLoad, concurrency: int, processes: int) -> BenchConfig:
    """The gRPC bench's config for the same run: `stats` reads its figures from it."""
    return BenchConfig(mode="download" if load.mode == "get" else "upload",
                       addr=f"{load.host}:{load.port}", concurrency=concurrency,
                       file_size=load.file_size, chunk_size=load.chunk_size if load.mode == "tus" else RECV_BUFFER,
                       channels=concurrency, processes=processes, count=load.count,
                       duration=load.duration, verify=False, cold_cache=False, run_id=load.run_id)


def header(load: HttpLoad, concurrency: int, processes: int, kind: str, machine: dict) -> str:
    per = (f"{load.count or 1} object(s) per stream" if load.duration is None else
           f"new objects for {load.duration:g} s")
    what = ("GET, bodies read with recv_into and dropped (length checked, no checksum)"
            if load.mode == "get" else "tus POST + one PATCH of the whole object, distinct contents")
    size = f" of {format_size(load.file_size)}" if load.file_size else ""
    return "\n".join([
        f"mini-oss HTTP {load.mode} bench -> {kind} at {load.host}:{load.port}",
        f"{concurrency} streams (one keep-alive connection each) x {per}{size}, "
        f"{processes} client processes; {what}",
        f"NOTE: the load generator shares this machine's {machine.get('nproc')} cores "
        f"({machine.get('cpu_model')}) with the server: its CPU (below) is taken from the server.",
    ])


def run_phase(load: HttpLoad, *, concurrency: int, processes: int, pid: int | None,
              labels: dict[int, str], kind: str, quiet: bool = False) -> dict:
    """Run `load` with `concurrency` streams over `processes` client processes; the report."""
    node = procmetrics.find_node(load.port, pid)
    machine = procmetrics.machine_info()
    started = time.monotonic()
    os.sync()
    machine["sync_seconds_before"] = time.monotonic() - started
    machine["busy_percent_before"] = psutil.cpu_percent(interval=QUIET_CHECK_SECONDS)
    if not quiet:
        print(header(load, concurrency, processes, kind, machine), flush=True)
        if machine["busy_percent_before"] > 15:
            print(f"WARNING: the machine was {machine['busy_percent_before']:.0f}% busy just before "
                  "the run: figures may be low", flush=True)
    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=client_main, name=f"bench-http-{p}", daemon=True,
                         args=(load, p, split(concurrency, processes, p), ready, go, results))
             for p in range(processes)]
    for proc in procs:
        proc.start()
    collected: dict[int, ProcessResult] = {}
    ports: dict[int, list[int]] = {}
    where: dict[int, int] = {}

    def wait_ready() -> None:
        ports.update(_wait_ready(ready, procs))
        where.update(connection_workers(node, load.port, labels, {p for ps in ports.values() for p in ps}))

    sampler = procmetrics.Sampler(node, labels)
    timed_phase(procs, sampler, go, results, collected, wait_ready)
    ordered = [collected[p] for p in sorted(collected)]
    for r in ordered:
        for ch, port in zip(r.channels, ports.get(r.process, [])):
            ch["worker_id"] = where.get(port)
    cfg = bench_config(load, concurrency, processes)
    target = {"kind": kind, "addr": f"{load.host}:{load.port}", "version": "http",
              "workers": len(node.workers)}
    report = stats.aggregate(cfg, ordered, sampler.report(), target, machine)
    report["mode"] = f"http {load.mode}"
    report["protocol"] = "http"
    report["committed"] = [oid for r in ordered for oid in r.committed]
    if not quiet:
        body = stats.render(report, cfg)
        print("\n" + body.split("\n\n", 1)[-1], flush=True)
    return report


def connection_workers(node: procmetrics.NodeProcesses, port: int, labels: dict[int, str],
                       clients: set[int]) -> dict[int, int]:
    """client port -> worker number (from its label `workerN`, else its pid). A connection the
    kernel completed may not be accepted by a busy worker yet: look again for a while."""
    where: dict[int, int] = {}
    deadline = time.monotonic() + LANDING_WAIT
    while True:
        _scan(node, port, labels, where)
        if clients <= set(where) or time.monotonic() > deadline:
            return where
        time.sleep(0.1)


def _scan(node: procmetrics.NodeProcesses, port: int, labels: dict[int, str], where: dict[int, int]) -> None:
    for worker in node.workers:
        label = labels.get(worker.pid, "")
        number = int(label[6:]) if re.fullmatch(r"worker\d+", label) else worker.pid
        try:
            conns = worker.net_connections(kind="tcp")
        except psutil.Error:
            continue
        for c in conns:
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port and c.raddr:
                where[c.raddr.port] = number


def _wait_ready(ready, procs) -> dict[int, list[int]]:
    deadline = time.monotonic() + READY_TIMEOUT
    ports: dict[int, list[int]] = {}
    while len(ports) < len(procs):
        try:
            process, problem, local = ready.get(timeout=POLL)
        except queue.Empty:
            if time.monotonic() > deadline or any(not p.is_alive() for p in procs):
                raise SystemExit("bench: an HTTP client process did not get ready")
            continue
        if problem:
            raise SystemExit(f"bench: HTTP client process {process} failed to prepare:\n{problem}")
        ports[process] = local
    return ports
