"""Run one bench: prepare the target, start the client processes, time them together, report.

Why: the entry points (upload_bench, download_bench, small_bench, compare) differ only in their
config; this is the one sequence they share:

1. Ask the target GetNodeInfo (what it is: node or bare ceiling, how many workers) and find its
   processes (procmetrics) so that its CPU and RSS can be sampled.
2. Download: make sure the objects to fetch exist (uploaded here, untimed, if missing).
3. Start `processes` client processes (multiprocessing, spawn) with their share of streams and
   channels; each connects and prepares, then reports ready.
4. Start the sampler and release every process at once ("go"); collect their results.
5. Aggregate (stats), print, write JSON; delete the uploaded objects unless --keep.

The client processes get `MALLOC_ARENA_MAX` / `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_`
(DESIGN.md: on these VMs, glibc returning 1 MiB buffers to the kernel and faulting them back in
costs ~1 ms per MiB; gRPC's threads each growing an arena does the same); a spawned node gets
the environment as it was (plus `--node-env`), so it runs as a user runs it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import queue
import secrets
import signal
import sys
import time

import psutil

from node.checksums import crc32

from tools.bench import disk_ceiling, procmetrics, stats, targets
from tools.bench.cli import BenchConfig
from tools.bench.driver import ProcessResult, client_main
from tools.bench.workload import ContentPool, download_object_id

CLIENT_MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "33554432",
                     "MALLOC_TRIM_THRESHOLD_": "1073741824"}
READY_TIMEOUT = 600.0   # preparing --sha256 for many big objects takes a while
RESULT_POLL = 1.0
QUIET_CHECK_SECONDS = 0.5   # how busy the machine is before the run (others' load skews it)


def _stub(addr: str):
    import grpc
    from node.pb import oss_pb2_grpc

    channel = grpc.insecure_channel(addr, options=[("grpc.max_send_message_length", 65 << 20),
                                                   ("grpc.max_receive_message_length", 65 << 20)])
    return channel, oss_pb2_grpc.ObjectStorageStub(channel)


def describe_target(addr: str) -> dict:
    from node.pb import oss_pb2

    channel, stub = _stub(addr)
    with channel:
        info = stub.GetNodeInfo(oss_pb2.GetNodeInfoRequest(), wait_for_ready=True, timeout=30)
    kind = "bare" if info.version.startswith("bare") else "node"
    return {"kind": kind, "addr": addr, "version": info.version, "workers": info.workers}


# -- download preparation ---------------------------------------------------------------------


def _upload_one(stub, object_id: str, size: int, chunk_size: int) -> None:
    """Untimed set-up upload of one object (distinct content from a small pool)."""
    from node.pb import oss_pb2

    pool = ContentPool(chunk_size, size, 16, seed=object_id)
    spec = pool.spec(object_id, number=crc32(object_id.encode()), tag=object_id.encode())
    session = stub.CreateUploadSession(oss_pb2.CreateUploadSessionRequest(
        object_id=object_id, file_name="bench.bin", file_size=size, chunk_size=chunk_size), timeout=60)

    def chunks():
        first = True
        for k in range(pool.chunks_per_object):
            offset = k * pool.chunk_size
            data = pool.chunk_data(spec, k, min(pool.chunk_size, size - offset))
            yield oss_pb2.UploadChunk(upload_id=session.upload_id if first else "", offset=offset,
                                      data=data, crc32=crc32(data))
            first = False
        if size == 0:
            yield oss_pb2.UploadChunk(upload_id=session.upload_id)

    stub.Upload(chunks(), timeout=3600)


def prepare_downloads(cfg: BenchConfig, target: dict) -> tuple[list[str], int, dict[str, str]]:
    """(object ids, their size, their SHA-256 as the node reported it); uploads missing ones."""
    import grpc
    from node.pb import oss_pb2

    ids = [cfg.object_id] if cfg.object_id else [download_object_id(cfg.file_size, i)
                                                 for i in range(cfg.objects)]
    channel, stub = _stub(cfg.addr)
    with channel:
        def ensure(object_id: str) -> oss_pb2.ObjectInfo:
            try:
                return stub.StatObject(oss_pb2.StatObjectRequest(object_id=object_id), timeout=30)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            print(f"bench: uploading {object_id} ({cfg.file_size} bytes) for the download bench",
                  file=sys.stderr, flush=True)
            _upload_one(stub, object_id, cfg.file_size, cfg.chunk_size)
            return stub.StatObject(oss_pb2.StatObjectRequest(object_id=object_id), timeout=30)

        def warm(object_id: str) -> None:
            # Twice, over one connection (one worker): the node admits a range to the page
            # cache on its second read (node.cache_admission); the first goes around it.
            for _ in range(2):
                for _ in stub.Download(oss_pb2.DownloadRequest(object_id=object_id), timeout=600):
                    pass

        with concurrent.futures.ThreadPoolExecutor(min(8, len(ids))) as pool:
            infos = list(pool.map(ensure, ids))
            if not cfg.cold_cache:
                # The run measures serving, not the disk: read every object, untimed, until it
                # is cached, as the bare server serves from memory. (The node writes uploads with
                # O_DIRECT, so a fresh object is not in the page cache; --cold-cache measures that.)
                print(f"bench: warming the page cache: two untimed reads of each of {len(ids)} objects",
                      file=sys.stderr, flush=True)
                list(pool.map(warm, ids))
    sizes = {info.size for info in infos}
    if len(sizes) != 1:
        raise SystemExit(f"bench: the objects to download differ in size: {sorted(sizes)}")
    return ids, sizes.pop(), {info.object_id: info.sha256 for info in infos}


def delete_objects(addr: str, object_ids: list[str]) -> int:
    """Delete what an upload run committed (not timed); returns how many failed."""
    import grpc
    from node.pb import oss_pb2

    failed = 0
    channel, stub = _stub(addr)
    with channel, concurrent.futures.ThreadPoolExecutor(8) as pool:
        def delete(object_id: str) -> bool:
            try:
                stub.DeleteObject(oss_pb2.DeleteObjectRequest(object_id=object_id), timeout=60)
                return True
            except grpc.RpcError:
                return False
        for ok in pool.map(delete, object_ids):
            failed += not ok
    return failed


# -- the run ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _client_environment():
    saved = {k: os.environ.get(k) for k in CLIENT_MALLOC_ENV}
    for key, value in CLIENT_MALLOC_ENV.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def split(n: int, parts: int, part: int) -> list[int]:
    """Round-robin share of range(n) for one of `parts` processes."""
    return list(range(part, n, parts))


def run_bench(cfg: BenchConfig, *, node_pid: int | None = None, labels: dict[int, str] | None = None,
              quiet: bool = False, sync: bool = False) -> dict:
    """Run one bench against cfg.addr and return the report (printed unless quiet).

    `sync`: os.sync() after the set-up, just before the timed phase (compare does)."""
    cfg = cfg.replace(run_id=cfg.run_id or secrets.token_hex(3))
    first = cfg.addr.split(",")[0]  # several nodes of one namespace: any one describes it
    target = describe_target(first)
    machine = procmetrics.machine_info()
    ports = [int(a.rsplit(":", 1)[1]) for a in cfg.addr.split(",")]
    node = procmetrics.find_nodes(ports, node_pid or cfg.node_pid)
    ids, size, shas = ([], cfg.file_size, {})
    if cfg.mode == "download":
        ids, size, shas = prepare_downloads(cfg, target)
        cfg = cfg.replace(file_size=size)
    if cfg.mode == "download" and cfg.cold_cache:
        # Cold means cold: what earlier phases (and the set-up uploads) left cached goes.
        machine["cache_drop"] = disk_ceiling.drop_page_cache([])
    if sync:
        # Write back earlier phases' dirty pages now, not during the timed phase.
        started = time.monotonic()
        os.sync()
        machine["sync_seconds_before"] = time.monotonic() - started
    machine["busy_percent_before"] = psutil.cpu_percent(interval=QUIET_CHECK_SECONDS)
    if not quiet:
        print(stats.header(cfg, target, machine), flush=True)
        if machine["busy_percent_before"] > 15:
            print(f"WARNING: the machine was {machine['busy_percent_before']:.0f}% busy just before the run "
                  "(other processes, or the kernel still writing back): figures may be low", flush=True)

    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = []
    channels = cfg.effective_channels
    with _client_environment():
        for p in range(cfg.processes):
            proc = ctx.Process(target=client_main, name=f"bench-client-{p}", daemon=True, args=(
                cfg, p, split(cfg.concurrency, cfg.processes, p), split(channels, cfg.processes, p),
                ids, size, shas, ready, go, results))
            proc.start()
            procs.append(proc)
    collected: dict[int, ProcessResult] = {}
    sampler = procmetrics.Sampler(node, labels or {})
    timed_phase(procs, sampler, go, results, collected,
                lambda: _wait_ready(cfg, ready, procs, results, collected))
    ordered = [collected[p] for p in sorted(collected)]
    report = stats.aggregate(cfg, ordered, sampler.report(), target, machine)
    if cfg.mode == "upload" and not cfg.keep and target["kind"] == "node":
        committed = [oid for r in ordered for oid in r.committed]
        report["deleted"] = len(committed) - delete_objects(first, committed)
    if not quiet:
        print("\n" + _body(report, cfg), flush=True)
    if cfg.json_path:
        with open(cfg.json_path, "w") as fh:
            json.dump(report, fh, indent=2, sort_keys=True)
    return report


def timed_phase(procs, sampler: procmetrics.Sampler, go, results, collected: dict[int, ProcessResult],
                wait_ready) -> None:
    """`wait_ready()` (every client prepared), then the sampler and "go" together, then collect
    every result. Whatever happens, the sampler stops and no client process outlives it.
    (Shared with the HTTP runner.)"""
    try:
        wait_ready()
        sampler.start()
        go.set()
        _collect(procs, results, collected)
    finally:
        go.set()
        if sampler.wall_start:
            sampler.stop()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


def _body(report: dict, cfg: BenchConfig) -> str:
    """The rendered report without the header (already printed before the run)."""
    text = stats.render(report, cfg)
    return text.split("\n\n", 1)[1] if "\n\n" in text else text


def _wait_ready(cfg: BenchConfig, ready, procs, results, collected) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    pending = set(range(cfg.processes))
    while pending:
        try:
            process, problem = ready.get(timeout=RESULT_POLL)
        except queue.Empty:
            if time.monotonic() > deadline or any(not p.is_alive() for p in procs):
                _drain(results, collected)
                raise SystemExit("bench: a client process did not get ready: "
                                 + "; ".join(r.failure for r in collected.values() if r.failure)[-2000:])
            continue
        if problem:
            raise SystemExit(f"bench: client process {process} failed to prepare:\n{problem}")
        pending.discard(process)


def _drain(results, collected) -> None:
    while True:
        try:
            r = results.get_nowait()
        except queue.Empty:
            return
        collected[r.process] = r


def _collect(procs, results, collected) -> None:
    while len(collected) < len(procs):
        try:
            r = results.get(timeout=RESULT_POLL)
        except queue.Empty:
            for i, proc in enumerate(procs):
                if not proc.is_alive() and i not in collected:
                    _drain(results, collected)
                    if i not in collected:
                        collected[i] = ProcessResult(process=i, pid=proc.pid or 0,
                                                     failure=f"client process exited with {proc.exitcode}")
            continue
        collected[r.process] = r


# -- targets we start ourselves ---------------------------------------------------------------


@contextlib.contextmanager
def open_target(cfg: BenchConfig):
    """Yield (cfg with the address, supervisor pid or None, worker labels) for cfg.spawn."""
    if not cfg.spawn:
        yield cfg, cfg.node_pid, {}
        return
    if cfg.spawn == "node":
        target = targets.spawn_node(cfg.workers, cfg.data_root, node_root=cfg.node_root,
                                    env=cfg.node_env_dict)
    else:
        target = targets.spawn_bare(cfg.workers, cfg.file_size, cfg.chunk_size)
    with target:
        print(f"bench: started {target.kind} (pid {target.pid}) at {target.addr}; log {target.log_path}",
              file=sys.stderr, flush=True)
        yield cfg.replace(addr=target.addr), target.pid, target.worker_labels()


def stop_cleanly_on_signals() -> None:
    """SIGTERM and SIGINT end the run through the normal unwinding, so a target we started is
    stopped (by its pid) and its data dir removed. SIGINT is re-armed because a shell starts
    background jobs with it ignored."""
    def terminate(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main(mode: str, description: str, argv: list[str] | None = None, **defaults) -> int:
    """Shared `main` of upload_bench and download_bench."""
    from tools.bench.cli import build_parser, config_from_args

    stop_cleanly_on_signals()
    parser = build_parser(mode, description)
    if defaults:
        parser.set_defaults(**defaults)
    cfg = config_from_args(mode, parser.parse_args(argv))
    with open_target(cfg) as (cfg, pid, labels):
        report = run_bench(cfg, node_pid=pid, labels=labels)
    return 1 if report["errors"] else 0
