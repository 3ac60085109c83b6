"""Helpers for the API.md contract tests: the raw generated stubs, nothing of the client library.

The contract tests (`tests/test_api_*.py`) talk to a real node through `oss_pb2_grpc` only, so
they check what any other client would see on the wire. This module holds what they share:

- reading an error the way API.md defines it (`error_of`, `expect_error`, `raises`): the gRPC
  code, the `google.rpc.ErrorInfo` reason (domain `oss.v1`) and its metadata;
- building and sending upload chunks (`msg`, `split`, `upload_chunks`, `put`), a request feed for
  streams a test keeps open (`Feed`), and a checked `download_all`;
- checksums (`crc32`, `crc32c`, `sha256_hex`), deterministic payloads, and views of the data
  directory (`part_file`, `object_files`, `tree`) for the on-disk half of the contract;
- `wait_until`, a bounded poll used instead of fixed sleeps.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import os
import pathlib
import queue
import random
import threading
import time
import zlib
from typing import Callable, Iterable, Iterator

import google_crc32c
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from node.pb import oss_pb2 as pb
from node.pb import oss_pb2_grpc

DOMAIN = "oss.v1"
KiB = 1024
MiB = 1024 * KiB
TIMEOUT = 30.0

ACTIVE = pb.UploadSession.ACTIVE
COMMITTED = pb.UploadSession.COMMITTED
ABORTED = pb.UploadSession.ABORTED
STATE = {0: "STATE_UNSPECIFIED", ACTIVE: "ACTIVE", COMMITTED: "COMMITTED", ABORTED: "ABORTED"}


# --- checksums and payloads -------------------------------------------------------------------

def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def crc32c(data: bytes) -> int:
    return google_crc32c.value(bytes(data))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible bytes: different seeds give different contents."""
    return random.Random(seed).randbytes(size)


def now_ms() -> int:
    return int(time.time() * 1000)


# --- errors -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Caught:
    """What a failed call carried: code name, ErrorInfo reason and metadata, message."""

    code: str = ""
    reason: str = ""
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    message: str = ""

    @property
    def uploaded_offset(self) -> int:
        assert "uploaded_offset" in self.metadata, (
            f"{self.code}/{self.reason}: ErrorInfo metadata has no uploaded_offset: "
            f"{self.metadata}")
        return int(self.metadata["uploaded_offset"])


def error_of(exc: grpc.RpcError) -> tuple[str, str, dict[str, str]]:
    """(code name, reason, metadata) of a service error, checking how API.md says it is carried.

    Fails the test if the status has no google.rpc.Status, no ErrorInfo, an ErrorInfo of another
    domain, or if the code is UNKNOWN/INTERNAL (never right for anything a client sent).
    """
    code = exc.code()
    details = exc.details() if hasattr(exc, "details") else str(exc)
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
        f"node answered {code.name}: {details!r}")
    status = rpc_status.from_call(exc)
    assert status is not None, f"{code.name} {details!r} carries no google.rpc.Status"
    assert status.code == code.value[0], (status.code, code)
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    assert len(infos) == 1, f"{code.name} {details!r}: expected one ErrorInfo, got {infos}"
    info = infos[0]
    assert info.domain == DOMAIN, f"ErrorInfo domain {info.domain!r}, want {DOMAIN!r}"
    assert info.reason, f"{code.name} {details!r}: ErrorInfo without a reason"
    return code.name, info.reason, dict(info.metadata)


def caught_of(exc: grpc.RpcError) -> Caught:
    code, reason, metadata = error_of(exc)
    return Caught(code, reason, metadata, exc.details() or "")


@contextlib.contextmanager
def expect_error(code: str, reason: str | Iterable[str]) -> Iterator[Caught]:
    """`with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND") as err: stub.StatObject(...)`.

    `reason` may be a set of acceptable reasons (used only where API.md leaves a choice).
    """
    reasons = {reason} if isinstance(reason, str) else set(reason)
    caught = Caught()
    try:
        yield caught
    except grpc.RpcError as exc:
        got = caught_of(exc)
        caught.code, caught.reason, caught.metadata, caught.message = (
            got.code, got.reason, got.metadata, got.message)
    else:
        pytest.fail(f"expected {code}/{sorted(reasons)}, but the call succeeded")
    assert caught.code == code and caught.reason in reasons, (
        f"expected {code}/{sorted(reasons)}, got {caught.code}/{caught.reason} "
        f"({caught.message!r}, metadata {caught.metadata})")


def raises(fn: Callable[[], object], code: str, reason: str | Iterable[str]) -> Caught:
    """Call `fn`, which must fail with `code`/`reason`; returns what the error carried."""
    with expect_error(code, reason) as caught:
        result = fn()
        if isinstance(result, Iterator) or hasattr(result, "__next__"):
            list(result)  # a server stream fails while it is read
    return caught


class Soft:
    """Collect several checks' failures and report them all at once (one node, many cases)."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    @contextlib.contextmanager
    def check(self, label: str) -> Iterator[None]:
        try:
            yield
        except AssertionError as exc:
            self.failures.append(f"{label}: {exc}".splitlines()[0])
        except grpc.RpcError as exc:
            self.failures.append(f"{label}: unexpected {exc.code().name} {exc.details()!r}")
        except pytest.fail.Exception as exc:
            self.failures.append(f"{label}: {exc}".splitlines()[0])

    def done(self) -> None:
        assert not self.failures, "\n".join(
            [f"{len(self.failures)} case(s) failed:"] + self.failures)


def forged_tokens(real: str) -> list[str]:
    """Page tokens the node did not issue, some made from a real one."""
    out = ["garbage", "../../../etc/passwd", "a" * 500, "\x00", "eyJrIjoib2JqLTAzIn0=",
           base64.b64encode(b"obj-03").decode()]
    if real:
        mid = len(real) // 2
        out.append(real[:mid] + ("A" if real[mid] != "A" else "B") + real[mid + 1:])
        out.append(real + "x")
        out.append(real[::-1])
    return [t for t in out if t != real]


# --- uploads ----------------------------------------------------------------------------------

_AUTO = object()


def msg(offset: int, data: bytes, upload_id: str = "", *, crc32_: object = _AUTO,
        crc32c_: object = None, sha256: str = "") -> pb.UploadChunk:
    """One UploadChunk. crc32 is computed unless `crc32_` is None (unset) or an explicit int;
    crc32c is unset unless `crc32c_` is _AUTO (computed) or an int."""
    m = pb.UploadChunk(upload_id=upload_id, offset=offset, data=data, sha256=sha256)
    if crc32_ is _AUTO:
        m.crc32 = crc32(data)
    elif crc32_ is not None:
        m.crc32 = int(crc32_)
    if crc32c_ is _AUTO:
        m.crc32c = crc32c(data)
    elif crc32c_ is not None:
        m.crc32c = int(crc32c_)
    return m


AUTO = _AUTO


def split(data: bytes, size: int, start: int = 0) -> list[tuple[int, bytes]]:
    """(offset, bytes) pieces of data[start:], each at most `size` long."""
    return [(off, data[off:off + size]) for off in range(start, len(data), size)]


def as_messages(upload_id: str, chunks: Iterable[pb.UploadChunk | tuple[int, bytes]],
                ) -> list[pb.UploadChunk]:
    out = []
    for item in chunks:
        m = item if isinstance(item, pb.UploadChunk) else msg(item[0], item[1])
        out.append(m)
    if out and not out[0].upload_id:
        first = pb.UploadChunk()
        first.CopyFrom(out[0])
        first.upload_id = upload_id
        out[0] = first
    return out


def upload_chunks(stub, upload_id: str, chunks: Iterable[pb.UploadChunk | tuple[int, bytes]],
                  timeout: float = TIMEOUT) -> pb.UploadResponse:
    """One Upload stream of these chunks; the first message carries upload_id."""
    return stub.Upload(iter(as_messages(upload_id, chunks)), timeout=timeout)


def upload_data(stub, upload_id: str, data: bytes, chunk_size: int, start: int = 0,
                end: int | None = None, timeout: float = TIMEOUT) -> pb.UploadResponse:
    """Upload data[start:end] in chunks of chunk_size (one stream). An empty range sends one
    message with no data, so the stream is never empty."""
    end = len(data) if end is None else end
    pieces = [(off, data[off:min(off + chunk_size, end)]) for off in range(start, end, chunk_size)]
    return upload_chunks(stub, upload_id, pieces or [(start, b"")], timeout=timeout)


def create(stub, object_id: str, size_or_data: int | bytes, file_name: str = "blob.bin",
           **fields) -> pb.UploadSession:
    size = size_or_data if isinstance(size_or_data, int) else len(size_or_data)
    return stub.CreateUploadSession(pb.CreateUploadSessionRequest(
        object_id=object_id, file_name=file_name, file_size=size, **fields), timeout=TIMEOUT)


def put(stub, object_id: str, data: bytes, file_name: str = "blob.bin", chunk_size: int = 0,
        **fields) -> pb.UploadResponse:
    """Create a session and upload `data` in one stream; checks that it committed."""
    session = create(stub, object_id, data, file_name, chunk_size=chunk_size, **fields)
    resp = upload_data(stub, session.upload_id, data, session.chunk_size or 64 * KiB)
    assert resp.session.state == COMMITTED, resp
    assert resp.HasField("object"), resp
    assert resp.object.sha256 == sha256_hex(data)
    assert resp.object.size == len(data)
    assert resp.object.generation == session.upload_id
    return resp


def get_session(stub, upload_id: str) -> pb.UploadSession:
    return stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=upload_id), timeout=TIMEOUT)


def stat(stub, object_id: str) -> pb.ObjectInfo:
    return stub.StatObject(pb.StatObjectRequest(object_id=object_id), timeout=TIMEOUT)


def node_info(stub) -> pb.NodeInfo:
    return stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=TIMEOUT)


def _all_pages(fetch: Callable[[str], object], field: str) -> list:
    """Every entry of a listing: `fetch(token)` returns one page; follow next_page_token."""
    out, token = [], ""
    for _ in range(10_000):
        resp = fetch(token)
        out.extend(getattr(resp, field))
        token = resp.next_page_token
        if not token:
            return out
    raise AssertionError("the listing never ended")


def list_all_objects(stub, prefix: str = "", page_size: int = 0) -> list[pb.ObjectInfo]:
    return _all_pages(lambda token: stub.ListObjects(pb.ListObjectsRequest(
        prefix=prefix, page_size=page_size, page_token=token), timeout=TIMEOUT), "objects")


def list_all_sessions(stub, prefix: str = "", page_size: int = 0) -> list[pb.UploadSession]:
    return _all_pages(lambda token: stub.ListUploadSessions(pb.ListUploadSessionsRequest(
        object_id_prefix=prefix, page_size=page_size, page_token=token), timeout=TIMEOUT), "sessions")


class Feed:
    """A request iterator a test feeds by hand, for streams it keeps open.

    `call = stub.Upload.future(iter(feed))`; `feed.send(m)`; `feed.close()` half-closes.
    The iterator polls so that gRPC's request thread never hangs after the call has ended.
    """

    def __init__(self) -> None:
        self._q: queue.Queue = queue.Queue()
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[pb.UploadChunk]:
        while True:
            try:
                item = self._q.get(timeout=0.05)
            except queue.Empty:
                if self._closed.is_set():
                    return
                continue
            if item is None:
                return
            yield item

    def send(self, m: pb.UploadChunk) -> None:
        self._q.put(m)

    def close(self) -> None:
        self._closed.set()
        self._q.put(None)


@contextlib.contextmanager
def open_upload(stub, timeout: float = TIMEOUT):
    """An Upload stream held open: yields (feed, future). The feed is closed on the way out."""
    feed = Feed()
    future = stub.Upload.future(iter(feed), timeout=timeout)
    try:
        yield feed, future
    finally:
        feed.close()
        if not future.done():
            future.cancel()


def _probe_busy(stub, upload_id: str) -> Caught | None:
    """One probe stream (an empty chunk at offset 0, which changes nothing if it gets through):
    the SESSION_BUSY error if another stream holds the session, else None."""
    try:
        stub.Upload(iter([pb.UploadChunk(upload_id=upload_id, offset=0, data=b"")]),
                    timeout=TIMEOUT)
    except grpc.RpcError as exc:
        caught = caught_of(exc)
        assert (caught.code, caught.reason) == ("ABORTED", "SESSION_BUSY"), caught
        return caught
    return None


@contextlib.contextmanager
def hold(stub, first: pb.UploadChunk, timeout: float = TIMEOUT, settle: float = 10.0):
    """An Upload stream that has sent `first` and is known to hold its session: yields
    (feed, future, busy), busy being the SESSION_BUSY error a probe stream got.

    A probe racing the held stream's first message can make the held stream the one that gets
    SESSION_BUSY; then the held stream is opened again (its chunk was not taken).
    """
    deadline = time.monotonic() + settle
    while True:
        with open_upload(stub, timeout=timeout) as (feed, call):
            feed.send(first)
            time.sleep(0.05)
            while True:
                busy = _probe_busy(stub, first.upload_id)
                if busy is not None:
                    break
                if call.done():
                    break
                assert time.monotonic() < deadline, "the held stream never claimed the session"
                time.sleep(0.02)
            if busy is not None:
                yield feed, call, busy
                return
            exc = call.exception()
            assert exc is not None and caught_of(exc).reason == "SESSION_BUSY", (
                f"the held stream ended: {exc or call.result()}")
        assert time.monotonic() < deadline, "the held stream never claimed the session"


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


def channels_by_worker(node, workers: int, attempts: int = 60) -> dict[int, grpc.Channel]:
    """One channel (its own connection) per worker id, found by asking GetNodeInfo."""
    found: dict[int, grpc.Channel] = {}
    for _ in range(attempts):
        ch = grpc.insecure_channel(node.addr, options=[("grpc.use_local_subchannel_pool", 1)])
        wid = node_info(oss_pb2_grpc.ObjectStorageStub(ch)).worker_id
        if wid in found:
            ch.close()
        else:
            found[wid] = ch
        if len(found) == workers:
            return found
    for ch in found.values():
        ch.close()
    pytest.skip(f"{attempts} connections reached only workers {sorted(found)}")


# --- downloads --------------------------------------------------------------------------------

@dataclasses.dataclass
class Downloaded:
    info: pb.ObjectInfo
    data: bytes
    chunks: list[pb.DownloadChunk]


def download_all(stub, object_id: str, max_chunk: int | None = None, timeout: float = TIMEOUT,
                 **req) -> Downloaded:
    """Read a whole Download stream, checking the per-chunk rules of API.md on the way:
    offsets contiguous and ascending, each CRC-32 right, ObjectInfo on the first message only,
    and (if max_chunk is given) no data longer than it."""
    chunks = list(stub.Download(pb.DownloadRequest(object_id=object_id, **req), timeout=timeout))
    assert chunks, "a Download stream must carry at least one message"
    assert chunks[0].HasField("object"), "the first DownloadChunk must carry ObjectInfo"
    for i, c in enumerate(chunks[1:], 1):
        assert not c.HasField("object"), f"DownloadChunk {i} carries ObjectInfo too"
    offset = chunks[0].offset
    for i, c in enumerate(chunks):
        assert c.offset == offset, f"chunk {i} at offset {c.offset}, expected {offset}"
        assert c.crc32 == crc32(c.data), f"chunk {i} at {c.offset}: bad crc32"
        if max_chunk is not None:
            assert len(c.data) <= max_chunk, f"chunk {i} has {len(c.data)} bytes > {max_chunk}"
        offset += len(c.data)
    return Downloaded(chunks[0].object, b"".join(c.data for c in chunks), chunks)


# --- the data directory -----------------------------------------------------------------------

def parts_dir(data_dir: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(data_dir) / "parts"


def part_file(data_dir: pathlib.Path, upload_id: str) -> pathlib.Path | None:
    """The part file of a session (name ends with `.part.<upload_id>`), or None."""
    d = parts_dir(data_dir)
    if not d.is_dir():
        return None
    found = [p for p in d.iterdir() if p.name.endswith(".part." + upload_id)]
    assert len(found) <= 1, found
    return found[0] if found else None


def part_size(data_dir: pathlib.Path, upload_id: str) -> int:
    p = part_file(data_dir, upload_id)
    return 0 if p is None else os.stat(p).st_size


def object_files(data_dir: pathlib.Path, upload_id: str | None = None,
                 object_id: str | None = None) -> list[pathlib.Path]:
    """Files in objects/ written by upload_id (its name holds `_<upload_id>`) and/or whose name
    starts with `<object_id>_`."""
    d = pathlib.Path(data_dir) / "objects"
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.iterdir()):
        if upload_id is not None and f"_{upload_id}" not in p.name:
            continue
        if object_id is not None and not p.name.startswith(object_id + "_"):
            continue
        out.append(p)
    return out


def index_link(data_dir: pathlib.Path, object_id: str) -> pathlib.Path:
    return pathlib.Path(data_dir) / "index" / object_id


def tree(root: pathlib.Path, skip: pathlib.Path | None = None) -> set[str]:
    """Every path under root (files, dirs, symlinks; symlinks not followed), relative, except
    those under `skip`."""
    root = pathlib.Path(root)
    out = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = pathlib.Path(dirpath)
        if skip is not None and (here == skip or skip in here.parents):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = here / name
            if skip is not None and p == skip:
                continue
            out.add(str(p.relative_to(root)))
    return out


def all_names_fit(root: pathlib.Path) -> list[str]:
    """Names under root longer than 255 bytes (should be none)."""
    too_long = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            if len(os.fsencode(name)) > 255:
                too_long.append(os.path.join(dirpath, name))
    return too_long


def session_busy(stub, upload_id: str) -> bool:
    """Does a stream hold this session? Probed with an empty chunk at offset 0, which changes
    nothing unless refused as busy (the probe itself holds the session for a moment)."""
    try:
        stub.Upload(iter([pb.UploadChunk(upload_id=upload_id, offset=0, data=b"")]))
    except grpc.RpcError as exc:
        return error_of(exc)[1] == "SESSION_BUSY"
    return False


def held_stream(stub, upload_id: str, data: bytes, probe=None):
    """An Upload stream that sent `data` at offset 0 and holds the session, left open: (call,
    queue to feed it more chunks and None to close it). `probe` (default `stub`) checks that it
    holds the session; the probe may itself hold the session at the moment the stream arrives,
    and then the stream is refused as busy and is tried again."""
    probe = probe or stub
    for _ in range(20):
        q: queue.Queue = queue.Queue()
        q.put(pb.UploadChunk(upload_id=upload_id, offset=0, data=data, crc32=zlib.crc32(data)))
        call = stub.Upload.future(iter(q.get, None))
        wait_until(lambda: call.done() or session_busy(probe, upload_id), 10, interval=0.05,
                   what="the stream to hold the session")
        if not call.done():
            return call, q
    raise AssertionError("the stream never got hold of the session")


# --- upload contract helpers (test_api_upload*.py) ---------------------------------------

#: The chunk size of the upload contract tests.
CHUNK = 4 * KiB


def check_failed(stub, node, upload_id: str, caught) -> pb.UploadSession:
    """The rule for every failed Upload: the error's uploaded_offset is the durable one that
    GetUploadSession reports afterwards, and nothing past it is kept."""
    offset = caught.uploaded_offset
    session = get_session(stub, upload_id)
    assert session.uploaded_offset == offset, (
        f"error said uploaded_offset={offset}, GetUploadSession says {session.uploaded_offset}")
    if session.state == ACTIVE:
        assert part_size(node.data_dir, upload_id) <= offset, (
            f"part file holds {part_size(node.data_dir, upload_id)} bytes past "
            f"uploaded_offset={offset}")
    return session


def finish(stub, upload_id: str, data: bytes, chunk: int = CHUNK) -> pb.UploadResponse:
    """Resume from the session's uploaded_offset and check the committed object is `data`."""
    start = get_session(stub, upload_id).uploaded_offset
    resp = upload_data(stub, upload_id, data, chunk, start=start)
    assert resp.session.state == COMMITTED, resp.session
    assert resp.object.sha256 == sha256_hex(data)
    assert resp.object.size == len(data)
    got = download_all(stub, resp.object.object_id)
    assert got.data == data
    return resp
