"""What the processes cost: the node's workers (CPU, RSS), the load generator, the machine.

Why: on a 2-core machine the load generator and the node compete for the same cores, so a
throughput figure means little without knowing who burnt the CPU. The node's processes are
found with psutil: from `--node-pid` (the supervisor; its workers are its children), or else
as the processes with a LISTEN socket on the target port (every worker binds it with
SO_REUSEPORT), whose common parent is the supervisor. A sampler thread reads each worker's
RSS every half second (peak and last) while the run goes on; CPU is the difference of
`cpu_times()` (user + system, all threads) between the start and the end of the timed phase.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field

import psutil

SAMPLE_SECONDS = 0.5


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def listening_pids(port: int) -> list[int]:
    pids = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            pids.add(conn.pid)
    return sorted(pids)


@dataclass
class NodeProcesses:
    """The target's supervisor (if known) and its serving workers."""

    supervisor: psutil.Process | None
    workers: list[psutil.Process]
    how: str

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]


def find_node(port: int, node_pid: int | None = None) -> NodeProcesses:
    """The node's processes, or an empty set (with the reason in `how`) if none are visible."""
    try:
        listeners = set(listening_pids(port))
    except (psutil.AccessDenied, OSError):
        listeners = set()
    if node_pid:
        sup = psutil.Process(node_pid)
        children = sup.children()
        workers = [c for c in children if c.pid in listeners] or [
            c for c in children if "resource_tracker" not in " ".join(_cmdline(c))]
        if not workers:  # a single-process server serves by itself
            workers = [sup]
        return NodeProcesses(sup, workers, f"--node-pid {node_pid}")
    if not listeners:
        return NodeProcesses(None, [], f"no process listens on port {port} (or no permission to see it)")
    workers = [psutil.Process(pid) for pid in sorted(listeners)]
    parents = {w.ppid() for w in workers}
    sup = psutil.Process(parents.pop()) if len(parents) == 1 and len(workers) > 1 else None
    return NodeProcesses(sup, workers, f"listening on port {port}")


def find_nodes(ports: list[int], node_pid: int | None = None) -> NodeProcesses:
    """The workers of every node listening on `ports` (several nodes of one namespace)."""
    if len(ports) == 1:
        return find_node(ports[0], node_pid)
    found = [find_node(port) for port in ports]
    return NodeProcesses(None, [w for f in found for w in f.workers], "; ".join(f.how for f in found))


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


@dataclass
class WorkerUsage:
    pid: int
    label: str
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    times_start: tuple[float, float] = (0.0, 0.0)   # (user, system): where the CPU went
    times_end: tuple[float, float] = (0.0, 0.0)
    rss_peak: int = 0
    rss_last: int = 0


@dataclass
class Sampler:
    """Samples the node's workers and the machine between `start()` and `stop()`."""

    node: NodeProcesses
    labels: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.usage = [WorkerUsage(w.pid, self.labels.get(w.pid, f"pid {w.pid}")) for w in self.node.workers]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.machine_start = self.machine_end = None
        self.wall_start = self.wall_end = 0.0

    def start(self) -> None:
        self.wall_start = time.monotonic()
        self.machine_start = psutil.cpu_times()
        for proc, use in zip(self.node.workers, self.usage):
            use.cpu_start = self._cpu(proc)
            use.times_start = self._times(proc)
        self._sample()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        for proc, use in zip(self.node.workers, self.usage):
            use.cpu_end = self._cpu(proc)
            use.times_end = self._times(proc)
        self.machine_end = psutil.cpu_times()
        self.wall_end = time.monotonic()

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        try:
            return cpu_seconds(proc)
        except psutil.Error:
            return 0.0

    @staticmethod
    def _times(proc: psutil.Process) -> tuple[float, float]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            return (0.0, 0.0)
        return (t.user, t.system)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self._sample()

    def _sample(self) -> None:
        for proc, use in zip(self.node.workers, self.usage):
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            use.rss_last = rss
            use.rss_peak = max(use.rss_peak, rss)

    def report(self) -> dict:
        """Node CPU and RSS per worker, and how busy the machine's cores were."""
        busy = None
        if self.machine_start is not None and self.machine_end is not None:
            a, b = self.machine_start, self.machine_end
            total = sum(b) - sum(a)
            idle = (b.idle - a.idle) + (getattr(b, "iowait", 0) - getattr(a, "iowait", 0))
            busy = (total - idle) / total if total > 0 else None
        return {
            "found": self.node.how,
            "supervisor_pid": self.node.supervisor.pid if self.node.supervisor else None,
            "cpu_seconds": sum(u.cpu_end - u.cpu_start for u in self.usage) if self.usage else None,
            "workers": [{"pid": u.pid, "label": u.label, "cpu_seconds": u.cpu_end - u.cpu_start,
                         "user_seconds": u.times_end[0] - u.times_start[0],
                         "system_seconds": u.times_end[1] - u.times_start[1],
                         "rss_peak_bytes": u.rss_peak, "rss_last_bytes": u.rss_last} for u in self.usage],
            "machine_busy_fraction": busy,
            "machine_cores": psutil.cpu_count(),
        }


def machine_info() -> dict:
    """What the figures ran on (RESULTS.md wants these next to every table)."""
    import grpc
    import google.protobuf

    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model or platform.processor(),
            "memory_bytes": psutil.virtual_memory().total, "python": sys.version.split()[0],
            "grpcio": grpc.__version__, "protobuf": google.protobuf.__version__,
            "platform": platform.platform(),
            # Others' load on these shared cores skews every figure: record it next to them.
            "loadavg_1m_before": os.getloadavg()[0]}
