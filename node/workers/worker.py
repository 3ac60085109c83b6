"""What one worker process runs: boot, serve, report to the supervisor, drain on SIGTERM.

A worker is started with the `spawn` method, so it begins with a fresh interpreter and creates
its own gRPC objects (gRPC must never be initialised before a fork). It tells the supervisor
"ready" once its server is serving, or "failed" with the reason and exit status BOOT_FAILED if
it cannot boot, so that the supervisor stops instead of respawning forever. It writes a
heartbeat into its metrics slot every second, and drains by itself if the supervisor vanishes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from multiprocessing.connection import Connection

from node.config import Settings

BOOT_FAILED = 3
HEARTBEAT_SECONDS = 1.0
log = logging.getLogger("mini_oss.worker")


def worker_main(settings: Settings, worker_id: int, workers: int, metrics_path: str | None,
                conn: Connection) -> None:
    """Entry point of a spawned worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which forwards SIGTERM
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit is an error, not a kill
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

        parent = os.getppid()

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


async def _heartbeat(slot, parent: int) -> None:
    while True:
        if slot is not None:
            slot.set("heartbeat", time.time())
        if os.getppid() != parent:  # the supervisor is gone: nobody will ever stop us
            log.error("supervisor vanished: draining")
            os.kill(os.getpid(), signal.SIGTERM)
            return
        await asyncio.sleep(HEARTBEAT_SECONDS)
