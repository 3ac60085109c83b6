"""kill -9 at random moments of many concurrent overwrites, with a reader polling index/ (one
node, or two nodes sharing a PostgreSQL catalog and the data directory).

Every object exists as v1; concurrent clients overwrite each with v2 while a killer thread
kill -9s a random worker, or the whole node (restarted on the same port), at random times: mid
chunk, mid checkpoint, mid commit, wherever the moment falls. Afterwards every upload has
completed by resuming, with the right SHA-256, and the poller, which read index/<object_id>
all along, only ever read a whole v1 or a whole v2: never a partial file, a mix, or nothing.

A reader that opens index/<id> can race an overwrite by the microsecond between the kernel
reading the symlink and finding its target, which the commit then frees; the object itself
never vanished (the index always names a whole file), so the poller resolves again before it
calls an object missing.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import socket
import threading
import time

import pytest

from node.client import Client, RetryPolicy

KiB = 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PacedFile(io.FileIO):
    """A file whose reads take `pace` seconds each, so that uploads last long enough for the
    kills to land in the middle of them."""

    def __init__(self, path, pace: float) -> None:
        super().__init__(path, "rb")
        self.pace = pace

    def read(self, size: int = -1) -> bytes:
        time.sleep(self.pace)
        return super().read(size)


class Poller(threading.Thread):
    def __init__(self, index_dir, versions: dict[str, set[str]]) -> None:
        super().__init__(daemon=True)
        self.index_dir = index_dir
        self.versions = versions
        self.stop = threading.Event()
        self.reads = 0
        self.anomalies: list[str] = []

    def read(self, object_id: str) -> bytes | None:
        for _ in range(3):
            try:
                with open(self.index_dir / object_id, "rb") as fh:
                    return fh.read()
            except FileNotFoundError:
                continue
        return None

    def run(self) -> None:
        ids = sorted(self.versions)
        while not self.stop.is_set():
            for object_id in ids:
                data = self.read(object_id)
                if data is None:
                    self.anomalies.append(f"{object_id}: vanished")
                elif hashlib.sha256(data).hexdigest() not in self.versions[object_id]:
                    self.anomalies.append(f"{object_id}: {len(data)} bytes that are neither version")
                self.reads += 1


CHUNK = 64 * KiB
MAX_GAP = 0.6  # seconds between two kills, at most


def storm(node_factory, tmp_path, *, uploads: int, size: int, kills: int, node_kills: int,
          shared_catalog: str = "") -> dict:
    """Each client reads its file slowly enough that its upload outlasts the whole kill plan
    (kills x MAX_GAP, plus 4 s per restart of the node), so every kill lands while uploads run.

    `shared_catalog`: a PostgreSQL URL; then two nodes of one worker each share the data
    directory and the catalog, clients use both addresses, and kills pick either node."""
    pace = ((kills + node_kills) * MAX_GAP + 4.0 * (1 + node_kills)) / (size // CHUNK)
    ports = [free_port() for _ in range(2 if shared_catalog else 1)]
    extra = {"catalog": shared_catalog} if shared_catalog else {}
    nodes = [node_factory(data_dir=tmp_path / "data", workers=1 if shared_catalog else 2,
                          listen=f"127.0.0.1:{port}", **extra,
                          env={"MINI_OSS_CHECKPOINT_BYTES": str(256 * KiB),
                               "MINI_OSS_DEFAULT_CHUNK_SIZE": str(CHUNK)}) for port in ports]
    node = nodes[0]
    addr = ",".join(f"127.0.0.1:{port}" for port in ports)
    policy = RetryPolicy(max_attempts=40, initial_backoff=0.05, max_backoff=1.0, deadline=180)
    v1 = {f"obj-{i:03d}": os.urandom(size // 2) for i in range(uploads)}
    v2 = {f"obj-{i:03d}": os.urandom(size + i) for i in range(uploads)}
    with Client(addr) as client:
        for object_id, data in v1.items():
            (tmp_path / object_id).write_bytes(data)
            client.upload(tmp_path / object_id, object_id)
    versions = {k: {hashlib.sha256(v1[k]).hexdigest(), hashlib.sha256(v2[k]).hexdigest()} for k in v1}
    poller = Poller(node.data_dir / "index", versions)
    poller.start()

    results: dict[str, object] = {}

    def overwrite(object_id: str) -> None:
        path = tmp_path / f"{object_id}.v2"
        path.write_bytes(v2[object_id])
        try:
            with Client(addr, retry=policy) as client, PacedFile(path, pace) as source:
                # Reach the node before the kills start: a client that never reached one gives
                # up at once (a wrong address), and a small object's first call (PutObject)
                # only goes out once its paced read is done.
                client.node_info()
                results[object_id] = client.upload(source, object_id, file_name=f"{object_id}.bin")
        except Exception as exc:  # reported below with the object's name
            results[object_id] = exc

    threads = [threading.Thread(target=overwrite, args=(k,)) for k in v2]
    for thread in threads:
        thread.start()
    rng = random.Random(os.getpid())
    killed = {"workers": 0, "node": 0}
    plan = ["worker"] * kills + ["node"] * node_kills
    rng.shuffle(plan)
    for what in plan:
        time.sleep(rng.uniform(0.1, MAX_GAP))
        if all(not t.is_alive() for t in threads):
            break
        victim = rng.choice(nodes)
        if what == "node":
            victim.kill()
            victim.start()
            killed["node"] += 1
        else:
            for _ in range(50):  # a worker killed a moment ago may not be replaced yet
                try:
                    os.kill(rng.choice(list(victim.worker_pids().values())), signal.SIGKILL)
                except (ProcessLookupError, IndexError):
                    time.sleep(0.1)
                    continue
                killed["workers"] += 1
                break
    for thread in threads:
        thread.join(240)
    poller.stop.set()
    poller.join(10)

    failures = {k: v for k, v in results.items() if isinstance(v, Exception)}
    assert not failures, failures
    for object_id, info in results.items():
        assert info.sha256 == hashlib.sha256(v2[object_id]).hexdigest(), object_id
    assert poller.anomalies == [], poller.anomalies[:10]
    assert poller.reads > uploads
    with Client(addr) as client:
        for object_id in v2:
            out = tmp_path / f"{object_id}.out"
            client.download(object_id, out)
            assert out.read_bytes() == v2[object_id]
    assert os.listdir(node.data_dir / "parts") == []
    assert len(os.listdir(node.data_dir / "objects")) == uploads
    return {"killed": killed, "reads": poller.reads}


def test_fault_storm_quick(node_factory, tmp_path):
    report = storm(node_factory, tmp_path, uploads=10, size=1024 * KiB, kills=3, node_kills=1)
    assert report["killed"] == {"workers": 3, "node": 1}, "the uploads ended before the kills"


@pytest.mark.slow
def test_fault_storm_50_uploads(node_factory, tmp_path):
    report = storm(node_factory, tmp_path, uploads=50, size=4096 * KiB, kills=12, node_kills=3)
    print(f"\nfault storm: {report}")
    assert report["killed"] == {"workers": 12, "node": 3}, "the uploads ended before the kills"


@pytest.mark.slow
def test_fault_storm_on_two_nodes_sharing_postgresql(node_factory, tmp_path, postgres_server):
    report = storm(node_factory, tmp_path, uploads=30, size=2048 * KiB, kills=8, node_kills=2,
                   shared_catalog=postgres_server.new_database())
    print(f"\nfault storm, two nodes on PostgreSQL: {report}")
    assert report["killed"] == {"workers": 8, "node": 2}, "the uploads ended before the kills"
