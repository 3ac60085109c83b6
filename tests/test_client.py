"""The client library: pure parts (retry math, one-pass hashing), resume logic against a fake
stub, and round trips against a real node (fixture `node`)."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import zlib

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node import errors
from node.client import (Client, RetryPolicy, SourceError, UploadReader, _Retrier, resumable)
from node.errors import OssError, TransportError
from node.pb import oss_pb2

KiB = 1024
MiB = 1024 * KiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------
# Retry policy


def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0)
    caps = [policy.backoff(n, rand=1.0) for n in range(1, 7)]
    assert caps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert policy.backoff(3, rand=0.0) == pytest.approx(0.2)  # jitter: half to all of the cap


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def retrier(policy: RetryPolicy, clock: FakeClock) -> _Retrier:
    return _Retrier(policy, clock=clock, sleep=clock.sleep, rand=lambda: 1.0)


def test_retrier_gives_up_after_max_attempts():
    clock = FakeClock()
    r = retrier(RetryPolicy(max_attempts=3, initial_backoff=1, deadline=None), clock)
    err = errors.SessionBusy("busy")
    r.wait(err)
    r.wait(err)
    with pytest.raises(errors.SessionBusy):
        r.wait(err)
    assert clock.sleeps == [1, 2]


def test_retrier_deadline_and_progress_reset():
    clock = FakeClock()
    r = retrier(RetryPolicy(max_attempts=100, initial_backoff=1, max_backoff=1, deadline=2.5), clock)
    err = TransportError("UNAVAILABLE", "down")
    r.wait(err)
    r.wait(err)
    r.progressed()  # progress restarts the clock and the count
    r.wait(err)
    r.wait(err)
    with pytest.raises(TransportError):
        r.wait(err)
    assert len(clock.sleeps) == 4


def test_retrier_honours_retry_info():
    clock = FakeClock()
    r = retrier(RetryPolicy(initial_backoff=0.1), clock)
    err = errors.TooManySessions("full")
    err.retry_delay = 3.0
    r.wait(err)
    assert clock.sleeps == [3.0]


@pytest.mark.parametrize("err, expected", [
    (errors.SessionBusy(), True), (errors.IdleTimeout(), True), (errors.Draining(), True),
    (TransportError("UNAVAILABLE"), True), (TransportError("CANCELLED"), True),
    (TransportError("DEADLINE_EXCEEDED"), True), (errors.TooManySessions(), True),
    (errors.DiskFull(), False), (errors.OffsetMismatch(), False), (errors.Sha256Mismatch(), False),
    (errors.SessionNotFound(), False), (TransportError("INTERNAL"), False),
])
def test_resumable(err, expected):
    assert resumable(err) is expected


# ------------------------------------------------------------------------------------------
# One-pass hashing reader


class NonSeekable(io.RawIOBase):
    """A pipe-like source: reads forward only, and returns short reads."""

    def __init__(self, data: bytes, step: int = 1000):
        self._data, self._pos, self._step = data, 0, step

    def readable(self):
        return True

    def read(self, n=-1):
        n = min(n, self._step)
        out = self._data[self._pos:self._pos + n]
        self._pos += len(out)
        return out


def test_reader_sequential_and_rewind_hash_once():
    data = os.urandom(10_000)
    reader = UploadReader(io.BytesIO(data), len(data))
    assert reader.read(4000) == data[:4000]
    reader.seek(1000)  # the node kept only 1000 bytes: resend from there
    assert reader.read(5000) == data[1000:6000]
    assert reader.hashed_upto == 6000
    assert reader.read(10_000) == data[6000:]
    assert reader.hexdigest() == sha(data)


def test_reader_continue_hashes_the_prefix():
    data = os.urandom(10_000)
    reader = UploadReader(io.BytesIO(data), len(data))
    reader.seek(7000)  # continuing an upload_id whose uploaded_offset is 7000
    assert reader.hashed_upto == 7000
    assert reader.read(100_000) == data[7000:]
    assert reader.hexdigest() == sha(data)


def test_reader_starts_at_the_file_objects_position():
    data = b"header" + os.urandom(5000)
    f = io.BytesIO(data)
    f.seek(6)
    reader = UploadReader(f, len(data) - 6)
    reader.read(100)
    reader.seek(0)
    assert reader.read(10_000) == data[6:]
    assert reader.hexdigest() == sha(data[6:])


def test_reader_not_seekable_forward_only():
    data = os.urandom(10_000)
    reader = UploadReader(NonSeekable(data), len(data))
    assert not reader.seekable
    assert reader.read(2500) == data[:2500]  # short reads are joined
    reader.seek(2500)
    with pytest.raises(SourceError, match="not seekable"):
        reader.seek(2000)
    reader.seek(4000)  # forward: read, hash and drop
    assert reader.read(10_000) == data[4000:]
    assert reader.hexdigest() == sha(data)


def test_reader_short_source():
    reader = UploadReader(io.BytesIO(b"abc"), 10)
    with pytest.raises(SourceError, match="ended at byte 3"):
        reader.read(10)


def test_reader_without_hash_seeks_freely():
    data = os.urandom(3000)
    reader = UploadReader(io.BytesIO(data), len(data), hash=False)
    reader.seek(2000)
    assert reader.hashed_upto == 0
    assert reader.read(5000) == data[2000:]
    with pytest.raises(ValueError):
        reader.hexdigest()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000), ops=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 900)),
                                                   max_size=20))
def test_reader_any_seek_read_sequence_hashes_each_byte_once(data, ops):
    reader = UploadReader(io.BytesIO(data), len(data))
    for where, n in ops:
        offset = int(where * len(data))
        reader.seek(offset)
        assert reader.read(n) == data[offset:offset + n]
        assert reader.position == min(len(data), offset + n)
    reader.seek(reader.position)
    rest = reader.read(len(data))
    assert rest == data[len(data) - len(rest):]
    assert reader.hexdigest() == sha(data)


# ------------------------------------------------------------------------------------------
# Resume logic against a fake stub (cuts the streams where the test says)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "cut by the test"):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return ()


class FakeFuture:
    def __init__(self, fn):
        self._fn = fn

    def result(self, timeout=None):
        return self._fn()

    def cancel(self):
        return True


class FakeDownloadCall:
    def __init__(self, messages):
        self._it = iter(messages)

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self._it)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self):
        pass


class FakeNode:
    """Just enough of the service for the client's resume paths."""

    def __init__(self, data: bytes, chunk_size: int, cuts: list[int]):
        self.data = data
        self.chunk_size = chunk_size
        self.cuts = list(cuts)  # byte counts after which the next stream is cut
        self.received = bytearray()
        self.offset = 0
        self.state = oss_pb2.UploadSession.ACTIVE
        self.sha_seen = ""
        self.streams: list[list[oss_pb2.UploadChunk]] = []
        self.downloads: list[oss_pb2.DownloadRequest] = []
        self.info = oss_pb2.ObjectInfo(object_id="o", file_name="o", size=len(data),
                                       sha256=sha(data), generation="g1")

    def session(self):
        return oss_pb2.UploadSession(upload_id="u1", object_id="o", file_name="o",
                                     file_size=len(self.data), chunk_size=self.chunk_size,
                                     uploaded_offset=self.offset, state=self.state)

    # unary
    def CreateUploadSession(self, request, timeout=None):
        return self.session()

    def GetUploadSession(self, request, timeout=None):
        return self.session()

    # streams
    @property
    def Upload(self):
        node = self

        class Method:
            def future(self, requests):
                return FakeFuture(lambda: node._upload(requests))

            def __call__(self, requests, timeout=None):
                return node._upload(requests)

        return Method()

    def _upload(self, requests):
        stream: list[oss_pb2.UploadChunk] = []
        self.streams.append(stream)
        cut = self.cuts.pop(0) if self.cuts else None
        got = 0
        for message in requests:
            stream.append(message)
            assert stream[0].upload_id == "u1"
            if self.state == oss_pb2.UploadSession.COMMITTED:
                continue
            assert message.HasField("crc32") and message.crc32 == zlib.crc32(message.data)
            assert message.offset <= self.offset, "gap"
            new = message.data[self.offset - message.offset:]
            self.received[self.offset:] = new
            self.offset += len(new)
            got += len(message.data)
            if message.sha256:
                self.sha_seen = message.sha256
            if cut is not None and got >= cut:
                raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
        if self.offset == len(self.data) and self.state != oss_pb2.UploadSession.COMMITTED:
            assert self.sha_seen == sha(bytes(self.received))
            self.state = oss_pb2.UploadSession.COMMITTED
        response = oss_pb2.UploadResponse(session=self.session())
        if self.state == oss_pb2.UploadSession.COMMITTED:
            response.object.CopyFrom(self.info)
        return response

    def Download(self, request):
        self.downloads.append(request)
        cut = self.cuts.pop(0) if self.cuts else None
        size = len(self.data)
        start = request.start_offset if request.start_offset >= 0 else max(0, size + request.start_offset)
        end = request.end_offset if request.HasField("end_offset") else size
        messages = []
        first = True
        for off in range(start, end, self.chunk_size):
            piece = self.data[off:min(end, off + self.chunk_size)]
            m = oss_pb2.DownloadChunk(offset=off, data=piece, crc32=zlib.crc32(piece))
            if first:
                m.object.CopyFrom(self.info)
                first = False
            messages.append(m)
            if cut is not None and off + len(piece) - start >= cut:
                messages.append(FakeRpcError(grpc.StatusCode.UNAVAILABLE))
                break
        if first:
            messages.append(oss_pb2.DownloadChunk(offset=start, object=self.info))
        return FakeDownloadCall(messages)


def fake_client(fake: FakeNode) -> Client:
    client = Client("127.0.0.1:1", retry=RetryPolicy(initial_backoff=0.001, max_backoff=0.001))
    client._stubs = [fake]
    client._reached = True
    client.small_put_max = 0  # the fake speaks sessions: these tests are about their resume
    return client


def test_upload_resumes_from_uploaded_offset_after_a_cut():
    data = os.urandom(100_000)
    fake = FakeNode(data, chunk_size=8192, cuts=[30_000, 20_000])
    seen = []
    with fake_client(fake) as client:
        info = client.upload(io.BytesIO(data), "o", progress=lambda d, t: seen.append((d, t)))
    assert info.sha256 == sha(data)
    assert bytes(fake.received) == data
    assert len(fake.streams) == 3
    # Each stream starts where the node said, the first message carries the upload id, and
    # only the very last chunk carries the one-pass hash.
    starts = [s[0].offset for s in fake.streams]
    assert starts[0] == 0 and 0 < starts[1] < starts[2] < len(data)
    hashes = [m.sha256 for s in fake.streams for m in s if m.sha256]
    assert hashes == [sha(data)] and fake.streams[-1][-1].sha256 == sha(data)
    assert seen[-1] == (len(data), len(data))


def test_upload_to_a_committed_session_returns_its_object():
    data = b"x" * 10
    fake = FakeNode(data, chunk_size=4096, cuts=[])
    fake.state = oss_pb2.UploadSession.COMMITTED
    with fake_client(fake) as client:
        info = client.upload(io.BytesIO(data), upload_id="u1")
    assert info.object_id == "o"
    assert [list(m.data for m in s) for s in fake.streams] == [[b""]]


def test_upload_gives_up_when_no_progress():
    data = os.urandom(50_000)
    fake = FakeNode(data, chunk_size=8192, cuts=[0] * 50)  # every stream dies at once
    fake.offset = 0

    def no_progress_upload(requests):
        for _ in requests:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
        raise AssertionError("unreachable")

    fake._upload = no_progress_upload
    client = fake_client(fake)
    client.retry = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.001)
    with pytest.raises(TransportError) as info:
        client.upload(io.BytesIO(data), "o")
    assert info.value.code == "UNAVAILABLE"
    assert info.value.metadata["upload_id"] == "u1"


def test_download_resumes_pinned_to_the_generation():
    data = os.urandom(100_000)
    fake = FakeNode(data, chunk_size=8192, cuts=[30_000, 10_000])
    out = io.BytesIO()
    with fake_client(fake) as client:
        info = client.download("o", out)
    assert out.getvalue() == data and info.generation == "g1"
    assert len(fake.downloads) == 3
    first, second, third = fake.downloads
    assert first.if_generation_match == "" and first.start_offset == 0
    assert second.if_generation_match == "g1" and second.start_offset > 0
    assert second.end_offset == len(data)
    assert third.start_offset > second.start_offset


def test_download_detects_a_bad_crc_and_a_bad_hash(tmp_path):
    data = os.urandom(20_000)
    fake = FakeNode(data, chunk_size=8192, cuts=[])
    fake.info.sha256 = "0" * 64
    with fake_client(fake) as client:
        with pytest.raises(errors.Sha256Mismatch):
            client.download("o", tmp_path / "f")
        assert not os.listdir(tmp_path)  # nothing at the path, no temp file left
        # a range is not the whole object: no hash to compare
        out = io.BytesIO()
        client.download("o", out, start=-100)
        assert out.getvalue() == data[-100:]

        original = fake.Download

        def corrupt(request):
            call = original(request)
            messages = list(call._it)
            messages[1].data = b"y" + messages[1].data[1:]
            return FakeDownloadCall(messages)

        fake.Download = corrupt
        with pytest.raises(errors.ChecksumMismatch, match="CRC"):
            client.download("o", io.BytesIO())


def test_never_reached_node_fails_fast():
    client = Client("127.0.0.1:1", retry=RetryPolicy(max_attempts=5, initial_backoff=1))
    t0 = time.monotonic()
    with pytest.raises(OssError) as info, client:
        client.stat("x")
    assert info.value.code == "UNAVAILABLE"
    assert time.monotonic() - t0 < 5


# ------------------------------------------------------------------------------------------
# Against a real node


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_round_trip(node, tmp_path):
    data = os.urandom(5 * MiB + 123)
    src = write(tmp_path / "src.bin", data)
    seen = []
    with Client(node.addr) as client:
        assert client.node_info().max_chunk_size > 0
        info = client.upload(src, "round.trip", content_type="application/x-test",
                             metadata={"k": "v"}, chunk_size=256 * KiB,
                             progress=lambda d, t: seen.append((d, t)))
        assert info.object_id == "round.trip" and info.file_name == "src.bin"
        assert info.size == len(data) and info.sha256 == sha(data)
        assert info.content_type == "application/x-test" and dict(info.metadata) == {"k": "v"}
        assert seen[-1] == (len(data), len(data))

        assert client.stat("round.trip") == info
        assert [o.object_id for o in client.list_objects()] == ["round.trip"]

        dest = tmp_path / "out.bin"
        got = client.download("round.trip", dest)
        assert got.generation == info.generation
        assert dest.read_bytes() == data
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

        chunks = list(client.iter_download("round.trip", chunk_size=64 * KiB))
        assert all(len(c) <= 64 * KiB for _, c in chunks)
        assert b"".join(c for _, c in chunks) == data

        client.delete("round.trip", if_generation_match=info.generation)
        with pytest.raises(errors.ObjectNotFound):
            client.stat("round.trip")
        with pytest.raises(errors.ObjectNotFound):
            client.download("round.trip", tmp_path / "gone.bin")
        assert not (tmp_path / "gone.bin").exists()


def test_zero_byte_object(node, tmp_path):
    with Client(node.addr) as client:
        info = client.upload(io.BytesIO(b""), "empty", file_name="empty.txt")
        assert info.size == 0 and info.sha256 == sha(b"")
        dest = tmp_path / "empty.out"
        assert client.download("empty", dest).size == 0
        assert dest.read_bytes() == b""


def test_ranged_download(node):
    data = os.urandom(300_000)
    with Client(node.addr) as client:
        client.upload(io.BytesIO(data), "ranged", file_name="r.bin")
        for start, end in [(0, 10), (100, 200_000), (299_999, None), (-1000, None),
                           (-10**9, 5), (1000, 10**9), (5, 5), (300_000, None)]:
            out = io.BytesIO()
            client.download("ranged", out, start=start, end=end, chunk_size=4096)
            expected = data[start:end] if start >= -len(data) else data[0:end]
            assert out.getvalue() == expected, (start, end)
        with pytest.raises(errors.InvalidRange):
            client.download("ranged", io.BytesIO(), start=10, end=5)


def test_list_paging_and_sessions(node):
    with Client(node.addr) as client:
        ids = [f"page-{i}" for i in range(7)]
        for object_id in reversed(ids):
            client.upload(io.BytesIO(object_id.encode()), object_id)
        client.upload(io.BytesIO(b"x"), "other")
        assert [o.object_id for o in client.list_objects(prefix="page-", page_size=2)] == ids
        assert len(list(client.list_objects(page_size=3))) == 8

        sessions = [client.create_session(f"s-{i}", "f", 10) for i in range(3)]
        listed = list(client.list_sessions(prefix="s-", page_size=2))
        assert sorted(s.upload_id for s in listed) == sorted(s.upload_id for s in sessions)
        client.abort_session(sessions[0].upload_id)
        assert client.get_session(sessions[0].upload_id).state == oss_pb2.UploadSession.ABORTED
        client.abort_session(sessions[0].upload_id)  # again: OK
        assert len(list(client.list_sessions(prefix="s-"))) == 2


class SlowSource(io.BytesIO):
    """A file that reads slowly, so the test can cut the stream in the middle."""

    def read(self, n=-1):
        time.sleep(0.005)
        return super().read(n)


class Cancel(Exception):
    pass


def test_resume_after_cancel_mid_stream(node):
    data = os.urandom(6 * MiB)
    with Client(node.addr) as client:
        session = client.create_session("resumed", "r.bin", len(data), chunk_size=64 * KiB)

        def cancel_at_1mib(done, total):
            if done >= 1 * MiB:
                raise Cancel()

        with pytest.raises(Cancel):
            client.upload(SlowSource(data), upload_id=session.upload_id, progress=cancel_at_1mib)

        # The node checkpoints what it verified when the stream ends; wait for it to settle.
        offset, deadline = -1, time.monotonic() + 10
        while time.monotonic() < deadline:
            state = client.get_session(session.upload_id)
            if state.uploaded_offset == offset and offset > 0:
                break
            offset = state.uploaded_offset
            time.sleep(0.3)
        assert state.state == oss_pb2.UploadSession.ACTIVE
        assert 0 < offset < len(data)

        seen = []
        info = client.upload(io.BytesIO(data), upload_id=session.upload_id,
                             progress=lambda d, t: seen.append(d))
        assert seen[0] == offset  # sent from uploaded_offset, not from 0
        assert info.sha256 == sha(data) and info.size == len(data)
        out = io.BytesIO()
        client.download("resumed", out)
        assert out.getvalue() == data
        # Continuing a committed session just returns its object.
        assert client.upload(io.BytesIO(data), upload_id=session.upload_id) == info


def test_preconditions_and_final_errors(node):
    with Client(node.addr) as client:
        first = client.upload(io.BytesIO(b"one"), "pre")
        with pytest.raises(errors.ObjectExists):
            client.upload(io.BytesIO(b"two"), "pre", if_absent=True)
        with pytest.raises(errors.GenerationMismatch):
            client.upload(io.BytesIO(b"two"), "pre", if_generation_match="nope")
        second = client.upload(io.BytesIO(b"two"), "pre", if_generation_match=first.generation)
        assert second.generation != first.generation
        with pytest.raises(errors.Sha256Mismatch) as info:
            client.upload(io.BytesIO(b"three"), "pre", sha256="0" * 64)  # one call, no session
        assert info.value.code == "DATA_LOSS" and "upload_id" not in info.value.metadata
        client.small_put_max = 0
        with pytest.raises(errors.Sha256Mismatch) as info:
            client.upload(io.BytesIO(b"three"), "pre", sha256="0" * 64)
        assert info.value.code == "DATA_LOSS" and "upload_id" in info.value.metadata
        with pytest.raises(errors.InvalidName):
            client.upload(io.BytesIO(b"x"), ".hidden")
        with pytest.raises(errors.GenerationMismatch):
            client.download("pre", io.BytesIO(), if_generation_match=first.generation)
        assert client.stat("pre").generation == second.generation


def test_small_uploads_take_one_call_and_fall_back_to_a_session(node_factory, tmp_path):
    # Every session this node would make fails: what gets stored went by PutObject.
    no_sessions = node_factory(workers=1, env={"MINI_OSS_FAILPOINTS": "session_recorded=error"})
    data = os.urandom(300_000)
    seen = []
    with Client(no_sessions.addr) as client:
        info = client.upload(write(tmp_path / "small.bin", data), "small",
                             progress=lambda d, t: seen.append((d, t)))
        assert (info.size, info.sha256, info.file_name) == (len(data), sha(data), "small.bin")
        assert seen == [(len(data), len(data))]
        piped = client.upload(NonSeekable(data, step=7000), "piped", size=len(data))
        assert piped.sha256 == sha(data)
        assert client.get_session(info.generation).state == oss_pb2.UploadSession.COMMITTED
        with pytest.raises(OssError) as failed:  # a precondition needs a session: none here
            client.upload(io.BytesIO(b"x"), "small", if_generation_match=info.generation)
        assert failed.value.code == "INTERNAL"
        assert client.stat("small") == info
    # A node whose max_chunk_size is below the object: refused as CHUNK_TOO_LARGE, so the
    # client makes a session and sends it in chunks, from a source it cannot rewind too.
    narrow = node_factory(workers=1, max_chunk_size=64 * KiB, default_chunk_size=16 * KiB)
    with Client(narrow.addr) as client:
        info = client.upload(NonSeekable(data, step=7000), "narrow", size=len(data))
        assert info.sha256 == sha(data)
        assert client.stat("narrow") == info


def test_a_fresh_clients_put_whose_worker_dies_under_it_is_retried(node_factory, tmp_path):
    """The first call of a new client is the put itself: a worker killed under it is a node
    that was reached (not a wrong address to give up on at once), so the put is sent again."""
    once = tmp_path / "once"
    once.mkdir()
    node = node_factory(workers=1, env={"MINI_OSS_FAILPOINTS": "put_written=crash",
                                        "MINI_OSS_FAILPOINTS_ONCE": str(once)})
    data = os.urandom(20_000)
    retry = RetryPolicy(max_attempts=30, initial_backoff=0.05, max_backoff=0.5)
    with Client(node.addr, retry=retry) as client:
        info = client.upload(io.BytesIO(data), "first-call")
        assert os.listdir(once) == ["put_written"], "the worker never died: the test proved nothing"
        assert info.sha256 == sha(data) and client.stat("first-call") == info


def test_non_seekable_source_with_size(node):
    data = os.urandom(200_000)
    with Client(node.addr) as client:
        with pytest.raises(SourceError, match="size="):
            client.upload(NonSeekable(data), "pipe")
        info = client.upload(NonSeekable(data, step=5000), "pipe", size=len(data))
        assert info.sha256 == sha(data)


def test_many_channels_spread_over_workers(node_factory):
    node = node_factory(workers=2)
    with Client(node.addr, channels=4) as client:
        workers = {client.node_info().worker_id for _ in range(8)}
        assert workers <= {0, 1} or workers <= {1, 2}
        results = []

        def put(i):
            results.append(client.upload(io.BytesIO(os.urandom(100_000)), f"par-{i}"))

        threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 8
        assert len(list(client.list_objects(prefix="par-"))) == 8


def test_second_stream_on_a_busy_session_retries_then_returns_the_object(node):
    data = os.urandom(4 * MiB)
    with Client(node.addr, channels=2) as client:
        session = client.create_session("busy", "b.bin", len(data), chunk_size=64 * KiB)
        first: list = []
        slow = threading.Thread(target=lambda: first.append(
            client.upload(SlowSource(data), upload_id=session.upload_id)))
        slow.start()
        time.sleep(0.2)
        # This one meets SESSION_BUSY (ABORTED: retryable), backs off, and either resumes the
        # session or finds it COMMITTED and returns its object.
        second = client.upload(io.BytesIO(data), upload_id=session.upload_id)
        slow.join()
        assert first and first[0].generation == second.generation == session.upload_id
        assert second.sha256 == sha(data)


class CountingStub:
    """Counts the calls a client makes, by method name."""

    def __init__(self, stub):
        self._stub = stub
        self.calls: dict[str, int] = {}

    def __getattr__(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1
        return getattr(self._stub, name)


def counting(client: Client) -> CountingStub:
    client._stubs = [CountingStub(client._stubs[0])]
    return client._stubs[0]


class VerySlowSource(io.BytesIO):
    def read(self, n=-1):
        time.sleep(0.02)
        return super().read(n)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_upload_survives_a_node_restart(node_factory):
    # A fixed (probed) port, so the node comes back where the client is pointed.
    node = node_factory(listen=f"127.0.0.1:{free_port()}", workers=1, grace=0.5)
    data = os.urandom(8 * MiB)
    restarted = []

    def restart_at_2mib(done, total):
        if done >= 2 * MiB and not restarted:
            restarted.append(done)
            node.restart()  # the stream is drained, checkpointed and cut meanwhile

    with Client(node.addr, retry=RetryPolicy(max_attempts=20, max_backoff=0.5)) as client:
        calls = counting(client).calls
        info = client.upload(VerySlowSource(data), "restart", chunk_size=64 * KiB,
                             progress=restart_at_2mib)
        assert calls["Upload"] >= 2 and calls["GetUploadSession"] >= 1
        assert restarted and info.sha256 == sha(data) and info.size == len(data)
        out = io.BytesIO()
        client.download("restart", out)
        assert out.getvalue() == data


def test_download_survives_a_node_restart(node_factory):
    node = node_factory(listen=f"127.0.0.1:{free_port()}", workers=1, grace=0.5)
    data = os.urandom(32 * MiB)
    with Client(node.addr, retry=RetryPolicy(max_attempts=20, max_backoff=0.5)) as client:
        info = client.upload(io.BytesIO(data), "dl-restart")
        calls = counting(client).calls
        got = bytearray()
        stream = client.iter_download("dl-restart", chunk_size=64 * KiB)
        for i, (offset, chunk) in enumerate(stream):
            assert offset == len(got)
            got += chunk
            if i == 3:
                node.restart()
        assert bytes(got) == data
        assert calls["Download"] >= 2  # it was cut, and resumed
        assert stream.info.generation == info.generation
