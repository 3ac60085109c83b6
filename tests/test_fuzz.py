"""Fuzzing every RPC of a live node with Hypothesis.

One rule, checked for every request: the node answers OK or an error whose (code, reason) is
in API.md's table (gRPC's own refusals, which carry no ErrorInfo, may only be
RESOURCE_EXHAUSTED for an oversized message) — never UNKNOWN, never INTERNAL. After the run
the node is still up and nothing exists outside its data directory.

The default suite sends a few hundred requests; `pytest --run-slow` sends over 10,000.
"""

from __future__ import annotations

import collections
import os
import zlib

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RunningNode
from node.errors import BY_REASON, TransportError
from node.pb import oss_pb2 as pb
from node.pb import oss_pb2_grpc
from node.status import from_rpc_error

QUICK, LONG = 40, 1500  # examples per RPC: 8 RPC kinds -> ~320 quick, ~12,000 long

names = st.one_of(
    st.sampled_from(["", ".", "..", "../x", "a/b", "a\x00b", "x" * 129, "ok-1", "ok_2.txt",
                     ".hidden", "a" * 128, "ü", "../../etc/passwd", "/abs", "\\\\evil", "~"]),
    st.text(max_size=40), st.text(alphabet="abc._-/\x00", max_size=12))
file_names = st.one_of(names, st.text(min_size=250, max_size=260))
int64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 5 * 1024 * 1024))
int32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-5, 5 * 1024 * 1024))
hexes = st.one_of(st.just(""), st.text(alphabet="0123456789abcdefABCDEFxyz", min_size=60, max_size=66))
metadata = st.dictionaries(st.text(max_size=20), st.text(max_size=200), max_size=5)
tokens = st.one_of(st.just(""), st.text(max_size=60), st.binary(max_size=40).map(lambda b: b.hex()))


SEEN: collections.Counter = collections.Counter()  # (code, reason) -> requests, for the report


def check(call):
    """Run one call; fail on an undocumented outcome."""
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
        SEEN["OK", ""] += 1
    except grpc.RpcError as exc:
        err = from_rpc_error(exc)
        SEEN[err.code, err.reason] += 1
        assert err.code not in ("UNKNOWN", "INTERNAL"), repr(err)
        if isinstance(err, TransportError):
            assert err.code in ("RESOURCE_EXHAUSTED", "CANCELLED"), repr(err)
        else:
            assert BY_REASON[err.reason].code == err.code, repr(err)


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    node = RunningNode(root / "data", {"workers": 2, "session_ttl": 30, "stream_idle_timeout": 2,
                                       "max_object_size": 1 << 40})
    node.start()
    before = sorted(os.listdir(root))
    with node.channel() as channel:
        yield node, channel, oss_pb2_grpc.ObjectStorageStub(channel)
    print(f"\nfuzzed requests: {sum(SEEN.values())}; outcomes: "
          + ", ".join(f"{code}/{reason or '-'}={n}" for (code, reason), n in SEEN.most_common()))
    assert node.proc.poll() is None, "the node died during fuzzing"
    assert sorted(os.listdir(root)) == before, "something was created outside the data dir"
    outside = [p for p in os.listdir(root / "data") if p not in
               ("parts", "objects", "index", "catalog.db", "catalog.db-wal", "catalog.db-shm",
                ".catalog-write.lock", ".sweep.lock", "mini-oss.lock", "catalog-id", "url-signing.key")]
    assert outside == []
    node.stop()


def fuzz_settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def create_requests():
    return st.builds(pb.CreateUploadSessionRequest, object_id=names, file_name=file_names,
                     file_size=int64, chunk_size=int32, sha256=hexes, content_type=st.text(max_size=300),
                     metadata=metadata, if_absent=st.booleans(), if_generation_match=tokens)


def run_unary(stub, examples: int):
    @fuzz_settings(examples)
    @given(create_requests())
    def create(request):
        check(lambda: stub.CreateUploadSession(request, timeout=10))

    @fuzz_settings(examples)
    @given(st.builds(pb.DownloadRequest, object_id=names, start_offset=int64,
                     end_offset=st.one_of(st.none(), int64), chunk_size=int32, if_generation_match=tokens))
    def download(request):
        check(lambda: stub.Download(request, timeout=10))

    @fuzz_settings(examples)
    @given(st.sampled_from(["GetUploadSession", "AbortUploadSession"]), tokens)
    def session_calls(method, upload_id):
        request_type = getattr(pb, f"{method}Request")
        check(lambda: getattr(stub, method)(request_type(upload_id=upload_id), timeout=10))

    @fuzz_settings(examples)
    @given(names, int32, tokens)
    def listings(prefix, page_size, token):
        check(lambda: stub.ListObjects(pb.ListObjectsRequest(prefix=prefix, page_size=page_size,
                                                             page_token=token), timeout=10))
        check(lambda: stub.ListUploadSessions(pb.ListUploadSessionsRequest(
            object_id_prefix=prefix, page_size=page_size, page_token=token), timeout=10))

    @fuzz_settings(examples)
    @given(names, tokens)
    def object_calls(object_id, generation):
        check(lambda: stub.StatObject(pb.StatObjectRequest(object_id=object_id), timeout=10))
        check(lambda: stub.DeleteObject(pb.DeleteObjectRequest(object_id=object_id,
                                                               if_generation_match=generation), timeout=10))

    for test in (create, download, session_calls, listings, object_calls):
        test()


chunks = st.builds(
    lambda upload_id, offset, data, crc, crc_ok, crc32c, sha: pb.UploadChunk(
        upload_id=upload_id, offset=offset, data=data, sha256=sha,
        **({"crc32": zlib.crc32(data) if crc_ok else crc} if crc is not None else {}),
        **({"crc32c": crc32c} if crc32c is not None else {})),
    st.one_of(st.just(""), st.just("SESSION"), tokens), int64, st.binary(max_size=2048),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)), st.booleans(),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)), hexes)


def run_upload_streams(channel, stub, examples: int):
    @fuzz_settings(examples)
    @given(st.lists(chunks, max_size=6), st.integers(0, 4096), st.booleans())
    def streams(messages, size, fresh):
        session = stub.CreateUploadSession(pb.CreateUploadSessionRequest(
            object_id="fuzz-up", file_name="f.bin", file_size=size), timeout=10)
        for msg in messages:
            if msg.upload_id == "SESSION":
                msg.upload_id = session.upload_id
        if messages and fresh:
            messages[0].upload_id = session.upload_id
        check(lambda: stub.Upload(iter(messages), timeout=10))

    @fuzz_settings(examples)
    @given(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
    def raw_bytes(frames):
        upload = channel.stream_unary("/oss.v1.ObjectStorage/Upload", request_serializer=None,
                                      response_deserializer=pb.UploadResponse.FromString)
        check(lambda: upload(iter(frames), timeout=10))

    streams()
    raw_bytes()


def test_fuzz_every_rpc_quick(fuzz_node):
    _, channel, stub = fuzz_node
    run_unary(stub, QUICK)
    run_upload_streams(channel, stub, QUICK)


@pytest.mark.slow
def test_fuzz_every_rpc_long(fuzz_node):
    _, channel, stub = fuzz_node
    run_unary(stub, LONG)
    run_upload_streams(channel, stub, LONG)


def test_huge_and_hostile_values(fuzz_node):
    _, _, stub = fuzz_node

    def reason_of(call) -> tuple[str, str]:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        err = from_rpc_error(caught.value)
        return err.code, err.reason

    assert reason_of(lambda: stub.CreateUploadSession(pb.CreateUploadSessionRequest(
        object_id="h", file_name="f", file_size=2**62))) == ("RESOURCE_EXHAUSTED", "TOO_LARGE")
    assert reason_of(lambda: stub.CreateUploadSession(pb.CreateUploadSessionRequest(
        object_id="h", file_name="f", file_size=-1))) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert reason_of(lambda: stub.CreateUploadSession(pb.CreateUploadSessionRequest(
        object_id="h\x00", file_name="f", file_size=1))) == ("INVALID_ARGUMENT", "INVALID_NAME")
    session = stub.CreateUploadSession(pb.CreateUploadSessionRequest(object_id="h", file_name="f", file_size=10))
    assert reason_of(lambda: stub.Upload(iter([pb.UploadChunk(upload_id=session.upload_id, offset=-1,
                                                              data=b"x")]))) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT")
    # A message over gRPC's limit is refused by gRPC itself: RESOURCE_EXHAUSTED, no ErrorInfo.
    info = stub.GetNodeInfo(pb.GetNodeInfoRequest())
    huge = b"z" * (info.max_chunk_size + 2 * 1024 * 1024)
    code, reason = reason_of(lambda: stub.Upload(iter([pb.UploadChunk(upload_id=session.upload_id, data=huge)])))
    assert (code, reason) == ("RESOURCE_EXHAUSTED", "")
    assert stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=session.upload_id)).uploaded_offset == 0
