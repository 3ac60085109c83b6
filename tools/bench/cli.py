"""Command-line flags of the benches, parsed once into one picklable `BenchConfig`.

Why one module: upload_bench, download_bench, small_bench and compare share every flag, and the
client processes receive the finished config (it is pickled to them by multiprocessing), so
nothing re-reads argv or the environment after start.

The seed's flags keep their spelling (`--addr --concurrency --file_size --object_id`); the newer
ones use dashes, and every flag accepts both spellings.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass

KiB, MiB, GiB = 1024, 1024 ** 2, 1024 ** 3
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000 ** 2, "mb": 1000 ** 2,
          "g": 1000 ** 3, "gb": 1000 ** 3, "kib": KiB, "mib": MiB, "gib": GiB}


def parse_size(text: str) -> int:
    """'256MiB' -> 268435456, '16KiB', '1MB' (decimal), '4096'."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256MiB, 16KiB, 1048576)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class BenchConfig:
    """Everything one bench run needs; shipped as is to every client process."""

    mode: str = "upload"                  # "upload" | "download"
    addr: str = "127.0.0.1:8080"
    concurrency: int = 100                # concurrent streams, over all client processes
    file_size: int = 256 * MiB
    chunk_size: int = 1 * MiB
    channels: int = 16                    # TCP connections, over all client processes
    processes: int = 2                    # client processes (each: one event loop)
    count: int | None = None              # objects per stream (default 1 unless --duration)
    duration: float | None = None         # seconds: streams start new objects until then
    object_id: str = ""                   # download: the one object every stream fetches
    objects: int = 8                      # download without --object_id: distinct objects
    verify: bool = True                   # download: check CRC-32 per chunk and SHA-256
    cold_cache: bool = False              # download: skip the untimed read that warms the cache
    send_sha256: bool = False             # upload: also send each object's SHA-256
    small: bool = False                   # upload: report durable commits per second
    small_calls: str = "put"              # upload of one-chunk objects: "put" | "session"
    keep: bool = False                    # upload: keep the objects (default: delete after)
    pool_chunks: int = 64                 # upload: distinct random chunks per client process
    json_path: str = ""
    node_pid: int | None = None
    spawn: str = ""                       # "" | "node" | "bare": start the target ourselves
    workers: int = 2                      # workers of a spawned target
    data_root: str = ""                   # where a spawned node's temporary data dir goes
    node_root: str = ""                   # a spawned node's code: a dir holding `node/`
    node_env: tuple[str, ...] = ()        # a spawned node's extra environment, "KEY=VALUE"
    channel_args: tuple[tuple[str, int], ...] = ()  # extra client channel options (experiments)
    balance: bool = True                  # deal streams evenly over the workers reached, not the connections
    label: str = ""                       # "node" | "bare" | free text, for reports
    run_id: str = ""                      # makes object ids unique per run

    @property
    def objects_per_stream(self) -> int | None:
        if self.duration is not None:
            return self.count  # None: until the deadline
        return self.count or 1

    @property
    def one_call_put(self) -> bool:
        """Each object is one PutObject call: it fits in one message and --small-calls put."""
        return self.mode == "upload" and self.small_calls == "put" and self.file_size <= self.chunk_size

    @property
    def effective_channels(self) -> int:
        """Every client process needs at least one channel of its own."""
        return max(self.channels, self.processes)

    @property
    def node_env_dict(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.node_env)

    def replace(self, **changes) -> "BenchConfig":
        return dataclasses.replace(self, **changes)


SMALL_CALLS = ("put", "session")
SMALL_CALLS_HELP = ("objects of at most --chunk-size (--small's): put = one PutObject call each "
                    "(default), session = CreateUploadSession then a one-message Upload, as before "
                    "PutObject existed")

COLD_CACHE_HELP = ("download: no warming read, and the page cache dropped (drop_caches, as root) "
                   "just before the timed phase; with --objects >= concurrency x count every "
                   "object is read once, from the disk (the header says which)")


def _add(parser: argparse.ArgumentParser, *names: str, **kwargs) -> None:
    spellings = []
    for name in names:
        spellings.append(name)
        alt = "--" + name[2:].replace("_", "-") if "_" in name else "--" + name[2:].replace("-", "_")
        if alt not in spellings and alt != name:
            spellings.append(alt)
    parser.add_argument(*spellings, **kwargs)


def build_parser(mode: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m tools.bench.{mode}_bench", description=description)
    _add(p, "--addr", default="127.0.0.1:8080", help="node HOST:PORT (default %(default)s)")
    _add(p, "--concurrency", type=int, default=100, help="concurrent streams (default %(default)s)")
    _add(p, "--file_size", type=parse_size, default=None,
         help="object size, e.g. 256MiB, 16KiB (default 256MiB; 16KiB with --small)")
    _add(p, "--chunk-size", type=parse_size, default=1 * MiB, help="bytes per message (default 1MiB)")
    _add(p, "--channels", type=int, default=16,
         help="gRPC channels = TCP connections, spread over the client processes (default %(default)s)")
    _add(p, "--processes", type=int, default=2,
         help="client processes, each one event loop driving its share of the streams (default %(default)s)")
    _add(p, "--count", type=int, default=None, help="objects per stream (default 1)")
    _add(p, "--duration", type=float, default=None,
         help="seconds: each stream starts new objects until then (the last one finishes)")
    _add(p, "--json", dest="json_path", default="", metavar="PATH", help="also write the results as JSON")
    _add(p, "--node-pid", type=int, default=None,
         help="pid of the node's supervisor (default: find the processes listening on --addr's port)")
    _add(p, "--spawn-node", action="store_const", const="node", dest="spawn", default="",
         help="start a node (default settings, --workers, temp data dir) for this run and stop it after")
    _add(p, "--spawn-bare", action="store_const", const="bare", dest="spawn",
         help="start the bare gRPC ceiling server for this run instead")
    _add(p, "--workers", type=int, default=2, help="workers of a spawned node or bare server (default %(default)s)")
    _add(p, "--data-root", default="", help="parent directory of a spawned node's data dir (default: system temp)")
    _add(p, "--node-root", default="",
         help="spawn the node from this directory's `node` package (e.g. a `git archive` of a commit)")
    _add(p, "--channel-arg", action="append", default=[], metavar="KEY=INT",
         help="extra gRPC channel option of the client (repeatable), e.g. grpc.http2.bdp_probe=0")
    _add(p, "--no-balance", dest="balance", action="store_false",
         help="deal streams round robin over the connections, however they landed on the workers "
              "(default: evenly over the workers the connections reached)")
    _add(p, "--node-env", action="append", default=[], metavar="KEY=VALUE",
         help="extra environment for a spawned node (repeatable), e.g. MALLOC_ARENA_MAX=2")
    if mode == "upload":
        _add(p, "--small", action="store_true",
             help="small-object mode: many small objects, report durable commits per second")
        _add(p, "--small-calls", choices=SMALL_CALLS, default="put", help=SMALL_CALLS_HELP)
        _add(p, "--sha256", dest="send_sha256", action="store_true",
             help="also send every object's SHA-256 (computed before the timed phase with --count)")
        _add(p, "--keep", action="store_true", help="keep the uploaded objects (default: delete them after)")
        _add(p, "--pool-chunks", type=int, default=64,
             help="random chunks per client process that objects are built from (default %(default)s)")
    else:
        _add(p, "--object_id", default="",
             help="object every stream fetches (uploaded first if missing); default: a set of --objects")
        _add(p, "--objects", type=int, default=8,
             help="without --object_id: distinct objects bench-dl-<size>-<i>, made if missing (default %(default)s)")
        _add(p, "--no-verify", dest="verify", action="store_false",
             help="skip the client's CRC-32 and SHA-256 checks (measures transfer alone)")
        _add(p, "--cold-cache", action="store_true", help=COLD_CACHE_HELP)
    return p


def config_from_args(mode: str, args: argparse.Namespace) -> BenchConfig:
    small = getattr(args, "small", False)
    file_size = args.file_size if args.file_size is not None else (16 * KiB if small else 256 * MiB)
    duration = args.duration
    if small and duration is None and args.count is None:
        duration = 10.0
    cfg = BenchConfig(
        mode=mode, addr=args.addr, concurrency=args.concurrency, file_size=file_size,
        chunk_size=args.chunk_size, channels=args.channels, processes=args.processes,
        count=args.count, duration=duration, json_path=args.json_path, node_pid=args.node_pid,
        spawn=args.spawn or "", workers=args.workers, data_root=args.data_root,
        node_root=args.node_root, node_env=tuple(args.node_env),
        channel_args=tuple((k, int(v)) for k, v in (a.split("=", 1) for a in args.channel_arg)),
        object_id=getattr(args, "object_id", ""), objects=getattr(args, "objects", 8),
        verify=getattr(args, "verify", True), cold_cache=getattr(args, "cold_cache", False),
        send_sha256=getattr(args, "send_sha256", False),
        small=small, small_calls=getattr(args, "small_calls", "put"), keep=getattr(args, "keep", False),
        pool_chunks=getattr(args, "pool_chunks", 64), balance=args.balance)
    validate(cfg)
    return cfg


def validate(cfg: BenchConfig) -> None:
    problems = []
    if cfg.concurrency < 1:
        problems.append("--concurrency must be >= 1")
    if cfg.processes < 1:
        problems.append("--processes must be >= 1")
    if cfg.channels < 1:
        problems.append("--channels must be >= 1")
    if cfg.chunk_size < 1:
        problems.append("--chunk-size must be >= 1")
    if cfg.file_size < 0:
        problems.append("--file_size must be >= 0")
    if cfg.count is not None and cfg.count < 1:
        problems.append("--count must be >= 1")
    if cfg.duration is not None and cfg.duration <= 0:
        problems.append("--duration must be > 0")
    if cfg.mode == "download" and cfg.objects < 1:
        problems.append("--objects must be >= 1")
    if any("=" not in item for item in cfg.node_env):
        problems.append("--node-env takes KEY=VALUE")
    if cfg.pool_chunks < 1:
        problems.append("--pool-chunks must be >= 1")
    if problems:
        raise SystemExit("bench: " + "; ".join(problems))
