"""What one worker process runs: boot, serve, report to the supervisor, drain on SIGTERM.

A worker is started with the `spawn` method, so it begins with a fresh interpreter and creates
its own gRPC objects (gRPC must never be initialised before a fork). It tells the supervisor
"ready" once its server is serving, or "failed" with the reason and exit status BOOT_FAILED if
it cannot boot, so that the supervisor stops instead of respawning forever. It writes a
heartbeat into its metrics slot every second.

If the supervisor dies (even by SIGKILL), the kernel tells the worker at once (PR_SET_PDEATHSIG,
SIGUSR1): nobody will ever ask it to drain, and a new node may be waiting for the data
directory's lock, which the worker holds too. So it ends its streams at once (each cancelled
upload checkpoints what it verified) and exits, instead of drain's usual grace.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
import time
from multiprocessing.connection import Connection

from node.config import Settings

BOOT_FAILED = 3
HEARTBEAT_SECONDS = 1.0
#: The signal a worker gets when its supervisor dies (server.serve ends streams at once on it).
ORPHANED = signal.SIGUSR1
_PR_SET_PDEATHSIG = 1
log = logging.getLogger("mini_oss.worker")


def worker_main(settings: Settings, worker_id: int, workers: int, metrics_path: str | None,
                conn: Connection, data_dir_lock=None) -> None:
    """Entry point of a spawned worker process. `data_dir_lock` (node.datadir.DataDirLock) is
    the supervisor's lock, duplicated into this process: held until it exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which forwards SIGTERM
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit is an error, not a kill
    parent = os.getppid()
    _die_with_parent(parent)
    from node import failpoints, server  # server imports gRPC: only ever inside the worker

    server.setup_logging(settings.log_level)
    booted = False
    slot = None
    try:
        failpoints.hit("worker_boot")
        if metrics_path:
            from node.metrics import MetricsBlock

            slot = MetricsBlock.open(metrics_path).slot(worker_id)
            slot.set("active_streams", 0)
            slot.set("ready", 0)
            slot.set("pid", os.getpid())
            slot.set("heartbeat", time.time())
            slot.add("starts")

        def on_ready(port: int) -> None:
            nonlocal booted
            booted = True
            if slot is not None:
                slot.set("ready", 1)
            conn.send(("ready", port))

        async def main() -> int:
            beat = asyncio.create_task(_heartbeat(slot, parent))
            try:
                return await server.serve(settings, on_ready=on_ready, worker_id=worker_id,
                                          workers=workers, metrics=slot)
            finally:
                beat.cancel()

        with asyncio.Runner(loop_factory=server.event_loop_factory()) as runner:
            status = runner.run(main())
    except BaseException as exc:  # noqa: BLE001 - report every way a boot can fail
        if booted:
            log.exception("worker %d failed", worker_id)
            raise
        reason = f"{type(exc).__name__}: {exc}"
        log.error("worker %d could not boot: %s", worker_id, reason)
        try:
            conn.send(("failed", reason))
        except OSError:
            pass
        sys.exit(BOOT_FAILED)
    sys.exit(status)


def _die_with_parent(parent: int) -> None:
    """Ask the kernel for ORPHANED when the supervisor dies; if it already has, raise it now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(ORPHANED), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the heartbeat's parent check remains
        pass
    if os.getppid() != parent:
        os.kill(os.getpid(), ORPHANED)


async def _heartbeat(slot, parent: int) -> None:
    """Every second: the heartbeat, and this process's CPU time added to the slot's
    `cpu_seconds` (its own since the last beat: the slot keeps the total of every process
    that held it, so a restart never makes the counter go down)."""
    counted = 0.0  # CPU seconds of this process already in the slot
    while True:
        if slot is not None:
            slot.set("heartbeat", time.time())
            used = time.process_time()
            if used > counted:
                slot.add("cpu_seconds", used - counted)
                counted = used
        if os.getppid() != parent:  # the supervisor is gone (belt and braces for PDEATHSIG)
            log.error("supervisor vanished: ending streams and exiting")
            os.kill(os.getpid(), ORPHANED)
            return
        await asyncio.sleep(HEARTBEAT_SECONDS)
