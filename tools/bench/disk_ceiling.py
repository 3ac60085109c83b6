"""`python -m tools.bench.disk_ceiling --dir DIR`: the disk's own limits, on the data dir's file system.

Why: a node figure is compared with the bare-gRPC ceiling, but the node also has to go through
the disk, and on these VMs the disk may be the lower of the two. So the ceiling a node run is
held against is min(bare gRPC, disk) for each mode, and the disk's side has to be measured in
the same run, on the same file system as the node's data dir, with the same concurrency:

* read:  N threads, each reading whole files sequentially from a shared queue, cold (the caller
  drops the page cache first), once buffered and once with O_DIRECT; the better of the two
  counts, since the node may do either.
* write: N threads, each writing one new file with O_DIRECT (as the node writes uploads) and
  one fsync at its end.
* small: N threads looping over what a durable small-object commit must do at least: write
  16 KiB to a temp file, fsync it, rename it to its final name, fsync the directory.

These are functions first (for compare's node/ceiling ratios); the command line runs them on a
directory of its own files and prints one line per mode. Threads are enough to load a disk:
preadv, pwrite and fsync release the GIL, so one Python process keeps N requests in flight.

Every mode's dict carries `cpu_s`, this process's user+system CPU during the timed part, so a
ceiling that was CPU-bound on the shared cores shows as such.
"""

from __future__ import annotations

import argparse
import errno
import json
import mmap
import os
import queue
import re
import sys
import threading
import time
import uuid
from typing import Callable

from node.direct_io import ALIGN
from node.storage import Storage
from tools.bench.cli import KiB, MiB, format_size, parse_size

DROP_CACHES = "/proc/sys/vm/drop_caches"
_O_DIRECT = getattr(os, "O_DIRECT", 0)
# errnos by which a file system (or its device) says it does not do O_DIRECT.
_DIRECT_REFUSALS = (errno.EINVAL, errno.EOPNOTSUPP)
MODES = ("read", "write", "small")


class DirectIORefused(OSError):
    """The file system of a path does not take O_DIRECT (its open or its first I/O failed)."""


# -- validation ------------------------------------------------------------------------------

def _check_concurrency(concurrency: int) -> None:
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")


def _check_directory(directory: str) -> None:
    if not os.path.isdir(directory):
        raise ValueError(f"not an existing directory: {directory!r}")


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_block(block: int) -> None:
    # O_DIRECT wants aligned lengths; the same block serves the buffered runs so both compare.
    if block < ALIGN or block % ALIGN:
        raise ValueError(f"block must be a positive multiple of {ALIGN}, got {block}")


# -- where we are ----------------------------------------------------------------------------

def _unescape_mount_path(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def file_system_of(path: str) -> str:
    """'ext4 (/dev/vda) at /' for the mount holding `path`, or 'unknown' off Linux."""
    real = os.path.realpath(path)
    best, best_mount = "unknown", ""
    try:
        with open("/proc/self/mountinfo") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return best
    for line in lines:
        left, _, right = line.partition(" - ")
        mount = _unescape_mount_path(left.split()[4])
        fs_type, source = (right.split() + ["", ""])[:2]
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best_mount):  # the last and longest mount wins
            best, best_mount = f"{fs_type} ({source}) at {mount}", mount
    return best


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# -- the page cache --------------------------------------------------------------------------

def _fadvise_dontneed(paths: list[str]) -> bool:
    """Drop these files' pages from the page cache; True if every file took it."""
    every = True
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            every = False
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            every = False
        finally:
            os.close(fd)
    return every


def drop_page_cache(paths: list[str], *, system_wide: bool = True) -> str:
    """Make the next read of `paths` come from the disk; say how: "drop_caches", "fadvise", "none".

    os.sync() first: only clean pages can be dropped. Then the machine's whole page cache
    (drop_caches, needs root), or else each file's pages (posix_fadvise DONTNEED). The latter
    is enough for these files; `system_wide=False` goes straight to it, so as not to make
    other processes on the machine (another bench) read cold too. "none": neither worked for
    every path, so reads may be warm.
    """
    os.sync()
    if system_wide:
        try:
            with open(DROP_CACHES, "w") as fh:
                fh.write("1")
            return "drop_caches"
        except OSError:
            pass
    if paths and _fadvise_dontneed(paths):
        return "fadvise"
    return "none"


# -- threads released together ----------------------------------------------------------------

def _timed_threads(count: int, work: Callable[[int, threading.Event], object]) -> tuple[list, float, float]:
    """Run work(index, stop) in `count` threads; return (their results, wall seconds, CPU seconds).

    The threads start first and are released by a barrier, so thread creation is not timed;
    the wall time runs from the release to the last thread's end. The first exception sets
    `stop` (the others check it between files or operations) and is raised once all ended.
    """
    release = threading.Barrier(count + 1)
    stop = threading.Event()
    results: list = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        release.wait()
        try:
            results[index] = work(index, stop)
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=run, args=(i,), name=f"disk-ceiling-{i}", daemon=True)
               for i in range(count)]
    for thread in threads:
        thread.start()
    cpu_before = _cpu_seconds()
    release.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu_before
    if errors:
        raise errors[0]
    return results, seconds, cpu


# -- file I/O ----------------------------------------------------------------------------------

def _refused(path: str, exc: OSError) -> DirectIORefused:
    where = file_system_of(os.path.dirname(os.path.abspath(path)))
    return DirectIORefused(exc.errno, f"O_DIRECT refused by the file system {where} "
                                      f"({exc.strerror}) for {path}")


def _open(path: str, flags: int, direct: bool) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC | (_O_DIRECT if direct else 0), 0o644)
    except OSError as exc:
        if direct and exc.errno in _DIRECT_REFUSALS:
            raise _refused(path, exc) from exc
        raise


def _read_file(path: str, buf: memoryview, direct: bool) -> int:
    """Read `path` start to end into `buf`, block by block; return its bytes.

    A short read ends it: regular files on a local file system return short only at their end,
    and with O_DIRECT the tail of a size that is not a multiple of 4096 comes back short (a
    further read at that unaligned offset would fail with EINVAL).
    """
    fd = _open(path, os.O_RDONLY, direct)
    try:
        offset = 0
        while True:
            try:
                got = os.preadv(fd, [buf], offset)
            except OSError as exc:
                if direct and offset == 0 and exc.errno in _DIRECT_REFUSALS:
                    raise _refused(path, exc) from exc
                raise
            offset += got
            if got < len(buf):
                return offset
    finally:
        os.close(fd)


def _write_file(path: str, size: int, data: memoryview, direct: bool) -> None:
    """Create `path` with `size` bytes (`data` repeated), then one fsync. With `direct`, `size`
    and len(data) must be multiples of ALIGN and `data` page-aligned."""
    fd = _open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, direct)
    try:
        offset = 0
        while offset < size:
            try:
                offset += os.pwrite(fd, data[:min(len(data), size - offset)], offset)
            except OSError as exc:
                if direct and offset == 0 and exc.errno in _DIRECT_REFUSALS:
                    raise _refused(path, exc) from exc
                raise
        os.fsync(fd)
    finally:
        os.close(fd)


def _random_aligned(size: int) -> mmap.mmap:
    """`size` random bytes in anonymous memory, which mmap puts on a page boundary (O_DIRECT)."""
    buf = mmap.mmap(-1, size)
    buf[:] = os.urandom(size)
    return buf


def _our_prefix() -> str:
    """A name prefix no other run (or process) uses, so cleaning up removes only our files."""
    return f".disk-ceiling-{os.getpid()}-{uuid.uuid4().hex[:8]}-"


def _remove_ours(directory: str, prefix: str) -> None:
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(prefix):
                os.unlink(entry.path)


def _rate(amount: float, seconds: float) -> float:
    return amount / seconds if seconds > 0 else 0.0


# -- the ceilings ------------------------------------------------------------------------------

def read_ceiling(paths: list[str], concurrency: int, *, direct: bool, block: int = 1 * MiB) -> dict:
    """Read every file of `paths` once, whole and sequentially, with `concurrency` threads.

    Each thread takes the next file from a shared queue. Buffered: os.preadv into one reused
    buffer per thread; `direct`: O_DIRECT into a page-aligned one (raises DirectIORefused if
    the file system does not take it). The page cache is the caller's business (drop it first
    for a cold read). At most len(paths) threads run; `concurrency` in the result says how many.
    """
    _check_concurrency(concurrency)
    _check_block(block)
    if not paths:
        raise ValueError("read_ceiling needs at least one file")
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    for path in paths:
        todo.put(path)
    readers = min(concurrency, len(paths))

    def reader(_index: int, stop: threading.Event) -> tuple[int, int]:
        buf = mmap.mmap(-1, block) if direct else bytearray(block)
        total = files = 0
        with memoryview(buf) as view:
            while not stop.is_set():
                try:
                    path = todo.get_nowait()
                except queue.Empty:
                    break
                total += _read_file(path, view, direct)
                files += 1
        if direct:
            buf.close()
        return total, files

    results, seconds, cpu = _timed_threads(readers, reader)
    total = sum(r[0] for r in results)
    return {"mb_per_s": _rate(total / 1e6, seconds), "bytes": total, "seconds": seconds,
            "files": sum(r[1] for r in results), "concurrency": readers, "direct": direct,
            "cpu_s": cpu}


def read_ceiling_best(paths: list[str], concurrency: int, block: int = 1 * MiB, *,
                      system_wide: bool = True) -> dict:
    """Cold reads of `paths` buffered, then with O_DIRECT; the better run's dict, plus both rates.

    The cache is dropped before each run (drop_page_cache; `system_wide` as there). Where the
    file system refuses O_DIRECT the buffered run is the result, `direct_mb_per_s` is None and
    `direct_refused` says why (else it is None).
    """
    cache_drop = drop_page_cache(paths, system_wide=system_wide)
    buffered = read_ceiling(paths, concurrency, direct=False, block=block)
    drop_page_cache(paths, system_wide=system_wide)
    try:
        direct, refused = read_ceiling(paths, concurrency, direct=True, block=block), None
    except DirectIORefused as exc:
        direct, refused = None, str(exc)
    best = buffered if direct is None or buffered["mb_per_s"] >= direct["mb_per_s"] else direct
    return {**best, "buffered_mb_per_s": buffered["mb_per_s"],
            "direct_mb_per_s": direct["mb_per_s"] if direct else None,
            "cache_drop": cache_drop, "direct_refused": refused}


def write_ceiling(directory: str, concurrency: int, file_size: int, *, block: int = 1 * MiB) -> dict:
    """`concurrency` threads each write one new file into `directory` with O_DIRECT, then fsync it.

    `file_size` is rounded up to a multiple of 4096 (O_DIRECT writes whole blocks; `bytes` and
    the rate count the rounded size). The data is one page-aligned block of random bytes,
    written again and again. The files are deleted afterwards, untimed. Raises
    DirectIORefused if the file system does not take O_DIRECT.
    """
    _check_concurrency(concurrency)
    _check_directory(directory)
    _check_positive("file_size", file_size)
    _check_block(block)
    size = -(-file_size // ALIGN) * ALIGN
    prefix = _our_prefix()
    data = _random_aligned(block)
    view = memoryview(data)

    def writer(index: int, _stop: threading.Event) -> None:
        _write_file(os.path.join(directory, f"{prefix}w{index}"), size, view, direct=True)

    try:
        _, seconds, cpu = _timed_threads(concurrency, writer)
    finally:
        _remove_ours(directory, prefix)
        view.release()
        data.close()
    total = concurrency * size
    return {"mb_per_s": _rate(total / 1e6, seconds), "bytes": total, "seconds": seconds,
            "files": concurrency, "concurrency": concurrency, "cpu_s": cpu}


def small_file_ceiling(directory: str, concurrency: int, *, size: int = 16 * KiB,
                       duration: float = 5.0) -> dict:
    """Durable small-file commits per second: `concurrency` threads loop for `duration` seconds
    over write `size` bytes to a temp file + fsync + rename to the final name + directory fsync.

    That is the least a durable small-object commit costs (the node also records it in its
    catalog). The operation in flight at the deadline finishes and counts. The files are
    deleted afterwards, untimed.
    """
    _check_concurrency(concurrency)
    _check_directory(directory)
    _check_positive("size", size)
    _check_positive("duration", duration)
    prefix = _our_prefix()
    data = memoryview(os.urandom(size))

    def committer(index: int, stop: threading.Event) -> int:
        deadline = time.perf_counter() + duration
        ops = 0
        while time.perf_counter() < deadline and not stop.is_set():
            final = os.path.join(directory, f"{prefix}s{index}-{ops}")
            _write_file(final + ".tmp", size, data, direct=False)
            os.rename(final + ".tmp", final)
            Storage.fsync_dir(directory)
            ops += 1
        return ops

    try:
        results, seconds, cpu = _timed_threads(concurrency, committer)
    finally:
        _remove_ours(directory, prefix)
    ops = sum(results)
    return {"ops_per_s": _rate(ops, seconds), "ops": ops, "seconds": seconds,
            "concurrency": concurrency, "size": size, "cpu_s": cpu}


# -- command line ------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.bench.disk_ceiling",
                                description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, help="an existing directory on the file system to measure")
    p.add_argument("--concurrency", type=int, default=100, help="threads in every mode (default %(default)s)")
    p.add_argument("--file-size", type=parse_size, default=64 * MiB,
                   help="read and write: bytes per file (default 64MiB)")
    p.add_argument("--block", type=parse_size, default=1 * MiB,
                   help="read and write: bytes per call, a multiple of 4096 (default 1MiB)")
    p.add_argument("--small-size", type=parse_size, default=16 * KiB,
                   help="small: bytes per file (default 16KiB)")
    p.add_argument("--small-duration", type=float, default=5.0,
                   help="small: seconds of the loop (default %(default)s)")
    p.add_argument("--modes", default=",".join(MODES), help="which ceilings (default %(default)s)")
    p.add_argument("--fadvise-only", action="store_true",
                   help="read: drop only these files' cached pages, not the machine's whole page cache")
    p.add_argument("--json", dest="json_path", default="", metavar="PATH", help="also write the results as JSON")
    return p


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _parser()
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown or not args.modes:
        p.error(f"--modes takes some of {','.join(MODES)}, got {unknown or 'none'}")
    if args.concurrency < 1:
        p.error("--concurrency must be >= 1")
    if not os.path.isdir(args.dir):
        p.error(f"--dir {args.dir!r} is not an existing directory")
    for flag, value in (("--file-size", args.file_size), ("--small-size", args.small_size),
                        ("--small-duration", args.small_duration)):
        if value <= 0:
            p.error(f"{flag} must be > 0")
    if args.block < ALIGN or args.block % ALIGN:
        p.error(f"--block must be a multiple of {ALIGN}")
    return args


def _read_own_files(args: argparse.Namespace) -> dict:
    """Write --concurrency files of --file-size (untimed), read them cold, delete them."""
    prefix = _our_prefix()
    paths = [os.path.join(args.dir, f"{prefix}r{i}") for i in range(args.concurrency)]
    data = os.urandom(args.block)
    try:
        with memoryview(data) as view:
            for path in paths:
                _write_file(path, args.file_size, view, direct=False)
        return read_ceiling_best(paths, args.concurrency, args.block, system_wide=not args.fadvise_only)
    finally:
        _remove_ours(args.dir, prefix)


def _print_read(r: dict, file_size: int) -> None:
    direct = "refused" if r["direct_mb_per_s"] is None else f"{r['direct_mb_per_s']:.0f}"
    print(f"disk read   {r['mb_per_s']:5.0f} MB/s (buffered {r['buffered_mb_per_s']:.0f}, O_DIRECT {direct}; "
          f"{r['concurrency']} readers of {format_size(file_size)} files, cache dropped by {r['cache_drop']}; "
          f"cpu {r['cpu_s']:.1f} s)")
    if r["direct_refused"]:
        print(f"  {r['direct_refused']}")


def _print_write(r: dict) -> None:
    print(f"disk write  {r['mb_per_s']:5.0f} MB/s (O_DIRECT, one fsync per file; {r['concurrency']} writers "
          f"of {format_size(r['bytes'] // r['files'])} files; cpu {r['cpu_s']:.1f} s)")


def _print_small(r: dict) -> None:
    print(f"disk small  {r['ops_per_s']:5.0f} ops/s ({format_size(r['size'])} write + fsync + rename + "
          f"dir fsync; {r['concurrency']} threads for {r['seconds']:.1f} s, {r['ops']} ops; "
          f"cpu {r['cpu_s']:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    where = file_system_of(args.dir)
    print(f"disk ceiling: {args.dir} on {where}, {args.concurrency} threads", flush=True)
    report: dict = {"dir": os.path.abspath(args.dir), "file_system": where,
                    "config": {"concurrency": args.concurrency, "file_size": args.file_size,
                               "block": args.block, "small_size": args.small_size,
                               "small_duration": args.small_duration, "modes": args.modes}}
    if "read" in args.modes:
        report["read"] = _read_own_files(args)
        _print_read(report["read"], args.file_size)
    if "write" in args.modes:
        try:
            report["write"] = write_ceiling(args.dir, args.concurrency, args.file_size, block=args.block)
            _print_write(report["write"])
        except DirectIORefused as exc:
            # The node falls back to buffered writes there; this ceiling is O_DIRECT's only.
            report["write_refused"] = str(exc)
            print(f"disk write  not measured: {exc}")
    if "small" in args.modes:
        report["small"] = small_file_ceiling(args.dir, args.concurrency, size=args.small_size,
                                             duration=args.small_duration)
        _print_small(report["small"])
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump(report, fh, indent=2, sort_keys=True)
    return 1 if "write_refused" in report else 0


if __name__ == "__main__":
    sys.exit(main())
