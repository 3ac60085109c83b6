"""Soak: many mixed streams against one node for a long time; zero errors, flat RSS and fds.

    python -m tools.soak --duration 600 --streams 100            # starts its own node
    python -m tools.soak --addr 127.0.0.1:8080 --node-pid PID    # or soaks a running one

Each of --streams threads loops over a random mix: upload an object (64 KiB to 4 MiB, random
bytes), download and verify it, stat, list a page, overwrite, delete. Every 10 s it samples each
worker's RSS and open file descriptors (psutil). At the end it prints the error count, the
operations done, and each worker's RSS and fds in the first and the last sample, and exits 1
if there was any error or if the median RSS or fds of the last third of the run is more than
--growth (default 25%) above that of the middle third.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from node.client import Client
from node.errors import OssError


def worker_stats(supervisor: psutil.Process) -> dict[int, tuple[int, int]]:
    stats = {}
    for child in supervisor.children():
        try:
            if child.net_connections(kind="tcp"):  # workers listen; the resource tracker does not
                stats[child.pid] = (child.memory_info().rss, child.num_fds())
        except psutil.Error:
            continue
    return stats


def start_node(data_dir: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "node", "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                             "--data-dir", data_dir, "--metrics-listen", ""],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        match = re.search(r"mini-oss gRPC server started at :(\d+)", line)  # (not the HTTP line)
        if match:
            return proc, f"127.0.0.1:{match.group(1)}"
    raise SystemExit("the node did not start")


def stream_loop(addr: str, index: int, stop: threading.Event, counts: collections.Counter,
                errors: list, scratch: str) -> None:
    rng = random.Random(index)
    object_id = f"soak-{index:03d}"
    source = os.path.join(scratch, f"{object_id}.in")
    target = os.path.join(scratch, f"{object_id}.out")
    with Client(addr, channels=2) as client:  # own connections, so streams reach every worker
        while not stop.is_set():
            try:
                data = os.urandom(rng.choice((64 << 10, 512 << 10, 1 << 20, 4 << 20)))
                with open(source, "wb") as fh:
                    fh.write(data)
                info = client.upload(source, object_id)
                assert info.sha256 == hashlib.sha256(data).hexdigest()
                client.download(object_id, target)
                with open(target, "rb") as fh:
                    assert fh.read() == data
                client.stat(object_id)
                next(iter(client.list_objects(prefix="soak-", page_size=20)), None)
                if rng.random() < 0.3:
                    client.delete(object_id)
                counts["rounds"] += 1
                counts["bytes"] += 2 * len(data)
            except (OssError, AssertionError) as exc:
                errors.append(f"{object_id}: {exc!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addr", help="soak a running node (default: start one)")
    parser.add_argument("--node-pid", type=int, help="supervisor pid of the node at --addr")
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--growth", type=float, default=0.25, help="allowed RSS/fd growth")
    args = parser.parse_args(argv)
    scratch = tempfile.mkdtemp(prefix="mini-oss-soak-")
    proc = None
    if args.addr:
        addr, supervisor = args.addr, psutil.Process(args.node_pid) if args.node_pid else None
    else:
        proc, addr = start_node(os.path.join(scratch, "data"))
        supervisor = psutil.Process(proc.pid)
    counts: collections.Counter = collections.Counter()
    errors: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=stream_loop, args=(addr, i, stop, counts, errors, scratch),
                                daemon=True) for i in range(args.streams)]
    for thread in threads:
        thread.start()
    samples: list[tuple[float, dict]] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.duration:
            time.sleep(min(args.sample, args.duration))
            if supervisor is not None:
                samples.append((time.monotonic() - started, worker_stats(supervisor)))
                print(f"{samples[-1][0]:7.0f}s rounds={counts['rounds']} errors={len(errors)} "
                      + " ".join(f"pid{pid}:rss={rss >> 20}MiB,fds={fds}"
                                 for pid, (rss, fds) in sorted(samples[-1][1].items())), flush=True)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        shutil.rmtree(scratch, ignore_errors=True)  # its sources, copies and the node's data
    elapsed = time.monotonic() - started
    print(f"\n{args.streams} streams for {elapsed:.0f} s: {counts['rounds']} rounds, "
          f"{counts['bytes'] / 1e9:.2f} GB moved, {len(errors)} errors")
    for line in errors[:20]:
        print("  error:", line)
    grew = []
    if len(samples) >= 6:
        # RSS swings with the buffers in flight at the moment of a sample: compare the medians
        # of the middle and the last third (a trend), not two single samples (noise).
        third = len(samples) // 3
        middle, last = samples[third:2 * third], samples[2 * third:]
        for pid in sorted(set(samples[-1][1])):
            def median(window, index):
                values = sorted(s[pid][index] for _, s in window if pid in s)
                return values[len(values) // 2] if values else 0
            rss0, rss1 = median(middle, 0), median(last, 0)
            fds0, fds1 = median(middle, 1), median(last, 1)
            print(f"worker {pid}: median rss {rss0 >> 20} -> {rss1 >> 20} MiB, fds {fds0} -> {fds1}")
            if rss1 > rss0 * (1 + args.growth) or fds1 > fds0 * (1 + args.growth) + 5:
                grew.append(pid)
    return 1 if errors or grew else 0


if __name__ == "__main__":
    sys.exit(main())
