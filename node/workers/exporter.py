"""/metrics: the workers' shared counters and their processes, as Prometheus text.

A custom collector (prometheus_client writes the format) reads every worker's slot at scrape
time and merges them; per-worker RSS and open files come from psutil, per-worker CPU from the
slots (each worker adds its own CPU time there, so the counter survives restarts). Runs in the
supervisor, in prometheus_client's own HTTP thread.
"""

from __future__ import annotations

from typing import Protocol

import psutil
from prometheus_client import start_http_server
from prometheus_client.core import (CollectorRegistry, CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from node.config import split_host_port
from node.metrics import HISTOGRAMS, STATUS_CODES, MetricsBlock

PREFIX = "mini_oss"


class WorkerSource(Protocol):
    def worker_pids(self) -> dict[int, int]: ...


class NodeCollector:
    def __init__(self, block: MetricsBlock, workers: WorkerSource) -> None:
        self.block = block
        self.workers = workers
        self._processes: dict[int, psutil.Process] = {}

    def _sum(self, name: str) -> float:
        return self.block.total(name)

    def collect(self):
        simple = (
            ("received_bytes", "Bytes of object data received in Upload streams."),
            ("sent_bytes", "Bytes of object data sent in Download streams."),
            ("objects_committed", "Objects committed."),
            ("http_sent_bytes", "Bytes of object data sent by the HTTP port."),
            ("http_received_bytes", "Bytes of object data received by the HTTP port (tus)."),
        )
        for name, doc in simple:
            family = CounterMetricFamily(f"{PREFIX}_{name}", doc)
            family.add_metric([], self._sum(name))
            yield family
        chunks = CounterMetricFamily(f"{PREFIX}_chunks", "Chunks received and sent.", labels=["direction"])
        chunks.add_metric(["received"], self._sum("chunks_received"))
        chunks.add_metric(["sent"], self._sum("chunks_sent"))
        yield chunks
        sessions = CounterMetricFamily(f"{PREFIX}_sessions", "Upload session events.", labels=["event"])
        for event in ("created", "committed", "aborted", "expired"):
            sessions.add_metric([event], self._sum(f"sessions_{event}"))
        yield sessions
        http = CounterMetricFamily(f"{PREFIX}_http_requests", "HTTP requests answered, by status class.",
                                   labels=["status"])
        for status in ("2xx", "3xx", "4xx", "5xx"):
            http.add_metric([status], self._sum(f"http_requests_{status}"))
        yield http
        errors = CounterMetricFamily(f"{PREFIX}_errors", "Calls that ended with an error, by status code.",
                                     labels=["code"])
        for code in STATUS_CODES:
            if code != "OK":
                errors.add_metric([code], self._sum(f"errors:{code}"))
        yield errors
        active = GaugeMetricFamily(f"{PREFIX}_active_streams", "Upload and Download streams running now.")
        active.add_metric([], self._sum("active_streams"))
        yield active
        yield from self._histograms()
        yield from self._processes_metrics()

    def _histograms(self):
        docs = {
            "chunk_write_seconds": "Time to verify, write and hash one upload chunk.",
            "commit_seconds": "Time to commit an object (fsync, rename, catalog, index).",
            "download_first_byte_seconds": "Time from a Download request to its first message.",
            "http_request_seconds": "Time to answer an HTTP request (a download: until its last byte).",
        }
        for name, bounds in HISTOGRAMS.items():
            counts = [0.0] * (len(bounds) + 1)
            total = 0.0
            for i in range(self.block.slots):
                slot_counts, slot_sum, _ = self.block.slot(i).histogram(name)
                counts = [a + b for a, b in zip(counts, slot_counts)]
                total += slot_sum
            cumulative, buckets = 0.0, []
            for bound, count in zip([*map(str, bounds), "+Inf"], counts):
                cumulative += count
                buckets.append((bound, cumulative))
            family = HistogramMetricFamily(f"{PREFIX}_{name}", docs[name])
            family.add_metric([], buckets, total)
            yield family

    def _processes_metrics(self):
        # CPU comes from the slots, not from psutil: a slot adds up every process that held it
        # (each adds its own time from its heartbeat), so a restart never lowers the counter.
        cpu = CounterMetricFamily(f"{PREFIX}_worker_cpu_seconds",
                                  "CPU time of each worker slot, over all its processes so far "
                                  "(updated every second).", labels=["worker"])
        for worker_id in range(self.block.slots):
            slot = self.block.slot(worker_id)
            if slot.get("starts"):
                cpu.add_metric([str(worker_id)], slot.get("cpu_seconds"))
        rss = GaugeMetricFamily(f"{PREFIX}_worker_rss_bytes", "Resident memory of each worker.",
                                labels=["worker"])
        fds = GaugeMetricFamily(f"{PREFIX}_worker_open_fds", "Open file descriptors of each worker.",
                                labels=["worker"])
        for worker_id, pid in sorted(self.workers.worker_pids().items()):
            process = self._processes.get(worker_id)
            if process is None or process.pid != pid:
                try:
                    process = self._processes[worker_id] = psutil.Process(pid)
                except psutil.Error:
                    continue
            try:
                with process.oneshot():
                    label = [str(worker_id)]
                    rss.add_metric(label, process.memory_info().rss)
                    fds.add_metric(label, process.num_fds())
            except psutil.Error:
                continue
        yield cpu
        yield rss
        yield fds


def start_exporter(listen: str, block: MetricsBlock, workers: WorkerSource):
    host, port = split_host_port(listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(block, workers))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
