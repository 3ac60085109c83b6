"""API.md objects, listing, names and node-level services, against a real node.

StatObject / ListObjects / DeleteObject, overwrite and generations, the "Names" rules in every
field that takes a name (with path-traversal attempts that must create nothing outside the data
directory), on-disk name shortening, GetNodeInfo, health and reflection.
"""

from __future__ import annotations

import concurrent.futures
import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from node.pb import oss_pb2 as pb
from node.pb import oss_pb2_grpc
from tests.contract import (all_names_fit, channels_by_worker, create, download_all, expect_error,
                            forged_tokens, get_session, index_link, KiB, list_all_objects, MiB,
                            node_info, now_ms, object_files, part_file, payload, put, raises,
                            sha256_hex, Soft, stat, tree, upload_chunks, upload_data, wait_until)

SHARED_NODE = True  # tests that take `node`/`stub` share one node per catalog (conftest)


# --- StatObject ---------------------------------------------------------------------------

def test_stat_object_fields(node, stub):
    data = payload(12345)
    before = now_ms()
    resp = put(stub, "obj", data, file_name="photo.JPG", content_type="image/jpeg",
               metadata={"k": "v"})
    after = now_ms()
    info = stat(stub, "obj")
    assert info == resp.object
    assert info.object_id == "obj" and info.file_name == "photo.JPG"
    assert info.size == len(data) and info.sha256 == sha256_hex(data)
    assert info.content_type == "image/jpeg" and dict(info.metadata) == {"k": "v"}
    assert info.generation == resp.session.upload_id
    assert before - 2000 <= info.created_at_unix_ms <= after + 2000


def test_stat_unknown_object_is_object_not_found(node, stub):
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "missing")
    # An ACTIVE upload does not make the object visible.
    create(stub, "pending", 10)
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "pending")


# --- overwrite and delete -----------------------------------------------------------------

def test_overwrite_makes_a_new_generation_and_frees_the_old_bytes(node, stub):
    v1 = put(stub, "obj", payload(5000, 1), file_name="a.txt").object
    assert len(object_files(node.data_dir, object_id="obj")) == 1
    data2 = payload(7000, 2)
    v2 = put(stub, "obj", data2, file_name="b.txt").object
    assert v2.generation != v1.generation
    assert stat(stub, "obj") == v2
    assert download_all(stub, "obj").data == data2
    files = wait_until(lambda: (lambda f: f if len(f) == 1 else None)(
        object_files(node.data_dir, object_id="obj")), 5, what="one file for the object")
    assert files[0].name == f"obj_b_{v2.generation}.txt"
    assert object_files(node.data_dir, upload_id=v1.generation) == []
    assert os.readlink(index_link(node.data_dir, "obj")) == f"../objects/{files[0].name}"


def test_delete_object(node, stub):
    info = put(stub, "obj", payload(100)).object
    put(stub, "keep", payload(100, 2))
    stub.DeleteObject(pb.DeleteObjectRequest(object_id="obj"), timeout=10)
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "obj")
    raises(lambda: stub.Download(pb.DownloadRequest(object_id="obj"), timeout=10),
           "NOT_FOUND", "OBJECT_NOT_FOUND")
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stub.DeleteObject(pb.DeleteObjectRequest(object_id="obj"), timeout=10)
    assert [o.object_id for o in list_all_objects(stub)] == ["keep"]
    assert not os.path.lexists(index_link(node.data_dir, "obj"))
    wait_until(lambda: object_files(node.data_dir, upload_id=info.generation) == [], 5,
               what="deleted object's bytes freed")
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stub.DeleteObject(pb.DeleteObjectRequest(object_id="never"), timeout=10)


def test_delete_with_if_generation_match(node, stub):
    v1 = put(stub, "obj", payload(100)).object
    with expect_error("FAILED_PRECONDITION", "GENERATION_MISMATCH"):
        stub.DeleteObject(pb.DeleteObjectRequest(object_id="obj",
                                                 if_generation_match=v1.generation + "x"))
    assert stat(stub, "obj") == v1
    v2 = put(stub, "obj", payload(100, 2)).object
    with expect_error("FAILED_PRECONDITION", "GENERATION_MISMATCH"):
        stub.DeleteObject(pb.DeleteObjectRequest(object_id="obj",
                                                 if_generation_match=v1.generation))
    assert stat(stub, "obj") == v2
    stub.DeleteObject(pb.DeleteObjectRequest(object_id="obj", if_generation_match=v2.generation))
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "obj")


def test_object_can_be_written_again_after_delete(node, stub):
    put(stub, "obj", payload(100, 1))
    stub.DeleteObject(pb.DeleteObjectRequest(object_id="obj"))
    data = payload(200, 2)
    info = put(stub, "obj", data, if_absent=True).object
    assert download_all(stub, "obj").data == data and stat(stub, "obj") == info


# --- ListObjects --------------------------------------------------------------------------

def make_objects(stub, ids, size=0):
    def one(oid):
        return put(stub, oid, payload(size, hash(oid) & 0xFFFF)).object
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, ids))


@pytest.mark.own_node
def test_list_objects_sorted_with_prefix(node, stub):
    ids = ["b", "a-2", "a-10", "A", "a", "c.x", "a_1", "ab", "z", "0"]
    infos = {i.object_id: i for i in make_objects(stub, ids, 10)}
    listed = stub.ListObjects(pb.ListObjectsRequest(), timeout=10)
    assert [o.object_id for o in listed.objects] == sorted(ids)
    assert listed.next_page_token == ""
    assert list(listed.objects) == [infos[i] for i in sorted(ids)]
    by_prefix = stub.ListObjects(pb.ListObjectsRequest(prefix="a"), timeout=10)
    assert [o.object_id for o in by_prefix.objects] == sorted(i for i in ids if i.startswith("a"))
    assert stub.ListObjects(pb.ListObjectsRequest(prefix="nope")).objects == []
    # An ACTIVE upload is not an object.
    create(stub, "pending", 10)
    assert "pending" not in [o.object_id for o in list_all_objects(stub)]


@pytest.mark.own_node
def test_list_objects_paging_visits_every_object_once(node, stub):
    ids = [f"obj-{i:02d}" for i in range(23)] + ["other-1", "other-2"]
    make_objects(stub, ids)
    for page_size in (1, 3, 5, 25, 26):
        seen, token, pages = [], "", 0
        while True:
            resp = stub.ListObjects(pb.ListObjectsRequest(page_size=page_size, page_token=token))
            assert len(resp.objects) <= page_size
            seen += [o.object_id for o in resp.objects]
            pages += 1
            token = resp.next_page_token
            if not token:
                break
            assert pages <= 30
        assert seen == sorted(ids), page_size
    seen = [o.object_id for o in list_all_objects(stub, prefix="obj-", page_size=4)]
    assert seen == sorted(i for i in ids if i.startswith("obj-"))


@pytest.mark.own_node
def test_list_objects_page_size_zero_means_100(node, stub):
    ids = [f"o{i:03d}" for i in range(101)]
    make_objects(stub, ids)
    resp = stub.ListObjects(pb.ListObjectsRequest(page_size=0), timeout=30)
    assert len(resp.objects) == 100 and resp.next_page_token
    rest = stub.ListObjects(pb.ListObjectsRequest(page_token=resp.next_page_token), timeout=30)
    assert [o.object_id for o in list(resp.objects) + list(rest.objects)] == ids
    assert rest.next_page_token == ""


@pytest.mark.own_node
def test_list_objects_page_size_over_1000_is_cut_to_1000(node, stub):
    ids = [f"o{i:04d}" for i in range(1001)]
    make_objects(stub, ids)
    resp = stub.ListObjects(pb.ListObjectsRequest(page_size=5000), timeout=30)
    assert len(resp.objects) == 1000 and resp.next_page_token
    rest = stub.ListObjects(pb.ListObjectsRequest(page_size=5000,
                                                  page_token=resp.next_page_token), timeout=30)
    assert [o.object_id for o in rest.objects] == ["o1000"]


def test_list_objects_forged_page_token_is_invalid_page_token(node, stub):
    make_objects(stub, [f"obj-{i:02d}" for i in range(6)])
    real = stub.ListObjects(pb.ListObjectsRequest(page_size=2)).next_page_token
    assert real
    soft = Soft()
    for token in forged_tokens(real):
        with soft.check(repr(token)):
            with expect_error("INVALID_ARGUMENT", "INVALID_PAGE_TOKEN"):
                stub.ListObjects(pb.ListObjectsRequest(page_size=2, page_token=token), timeout=10)
    soft.done()


# --- names --------------------------------------------------------------------------------

BAD_OBJECT_IDS = ["", "x" * 129, ".", "..", ".hidden", "a/b", "a\x00b", "ü", "a b", "a\\b",
                  "../evil", "/abs", "a:b", "é" * 10, "obj\n"]
GOOD_OBJECT_IDS = ["x" * 128, "a", "A-z_0.9", "a..b", "-lead", "_", "a.", "0"]


@pytest.mark.own_node
def test_invalid_object_ids_are_invalid_name_in_every_call(node, stub):
    soft = Soft()
    calls = {
        "CreateUploadSession": lambda oid: create(stub, oid, 10),
        "StatObject": lambda oid: stat(stub, oid),
        "Download": lambda oid: list(stub.Download(pb.DownloadRequest(object_id=oid), timeout=10)),
        "DeleteObject": lambda oid: stub.DeleteObject(pb.DeleteObjectRequest(object_id=oid)),
    }
    for oid in BAD_OBJECT_IDS:
        for name, call in calls.items():
            with soft.check(f"{name}({oid!r})"):
                with expect_error("INVALID_ARGUMENT", "INVALID_NAME"):
                    call(oid)
    soft.done()
    assert stub.ListUploadSessions(pb.ListUploadSessionsRequest()).sessions == []


@pytest.mark.own_node
def test_valid_object_ids_work(node, stub):
    for oid in GOOD_OBJECT_IDS:
        data = payload(10, len(oid))
        put(stub, oid, data)
        assert download_all(stub, oid).data == data
    assert [o.object_id for o in list_all_objects(stub)] == sorted(GOOD_OBJECT_IDS)
    assert all_names_fit(node.data_dir) == []


BAD_FILE_NAMES = ["", "x" * 256, "é" * 128, "a/b", "/", "../x", "a\x00b", ".", ".."]
GOOD_FILE_NAMES = ["x" * 255, "é" * 127 + "x", "😀" * 63 + "abc", ".hidden", "...", "a b",
                   "tab\there", "new\nline", "ext.é" * 3 + "ü" * 100,
                   "back\\slash", "ünï😀.tar.gz", "x" * 230 + ".verylongextension",
                   "x" * 10 + "." + "y" * 244]


@pytest.mark.own_node
def test_invalid_file_names_are_invalid_name(node, stub):
    soft = Soft()
    for name in BAD_FILE_NAMES:
        with soft.check(repr(name[:20])):
            with expect_error("INVALID_ARGUMENT", "INVALID_NAME"):
                create(stub, "obj", 10, file_name=name)
    soft.done()
    assert stub.ListUploadSessions(pb.ListUploadSessionsRequest()).sessions == []


def test_long_file_names_are_kept_in_object_info_and_shortened_on_disk(node, stub):
    for i, name in enumerate(GOOD_FILE_NAMES):
        assert len(name.encode()) <= 255
        oid = f"{'o' * 120}{i:03d}"   # a long object id too, so the on-disk name must shrink
        data = payload(3 * 4 * KiB, i)
        s = create(stub, oid, data, file_name=name, chunk_size=4 * KiB)
        assert s.file_name == name
        upload_data(stub, s.upload_id, data, 4 * KiB, end=4 * KiB)   # a part file exists now
        assert part_file(node.data_dir, s.upload_id) is not None
        assert all_names_fit(node.data_dir) == []
        resp = upload_data(stub, s.upload_id, data, 4 * KiB, start=4 * KiB)
        assert resp.object.file_name == name
        assert stat(stub, oid).file_name == name
        got = download_all(stub, oid)
        assert got.data == data and got.info.file_name == name
        [f] = object_files(node.data_dir, upload_id=s.upload_id)
        assert len(f.name.encode()) <= 255
        assert f.name.startswith(oid + "_")
        assert os.readlink(index_link(node.data_dir, oid)) == f"../objects/{f.name}"
        # Names are cut at UTF-8 character boundaries: every name decodes (a cut inside a
        # character would show here as a surrogate escape that does not encode).
        f.name.encode().decode("utf-8")
        # The stem is shortened first; the extension is kept whenever it fits.
        stem, ext = os.path.splitext(name)
        fixed = len(oid.encode()) + 2 + len(s.upload_id.encode())
        if fixed + len(ext.encode()) <= 255:
            assert f.name.endswith(f"_{s.upload_id}{ext}"), (name, f.name)
            kept = f.name[len(oid) + 1:len(f.name) - len(f"_{s.upload_id}{ext}")]
            assert stem.startswith(kept), (name, f.name)
            if fixed + len(name.encode()) <= 255:
                assert kept == stem
    assert all_names_fit(node.data_dir) == []


def test_path_traversal_in_every_name_field_creates_nothing_outside_the_data_dir(node, stub):
    outside = node.data_dir.parent
    before = tree(outside, skip=node.data_dir)
    before_up = set(os.listdir(outside.parent))
    tmp_evil = os.path.lexists("/tmp/evil")
    real = put(stub, "real", payload(100)).object
    s = create(stub, "pending", payload(2 * 4 * KiB), chunk_size=4 * KiB)
    evil = ["../evil", "../../evil", "/tmp/evil", "..", "a/../../evil", "%2e%2e%2fevil",
            "..\\evil", f"../{node.data_dir.name}/index/real", f"../parts/{s.upload_id}",
            "index/../../evil", "evil\x00.txt"]
    for bad in evil:
        for call in (
            lambda: create(stub, bad, 10),
            lambda: create(stub, "ok", 10, file_name=bad),
            lambda: stat(stub, bad),
            lambda: list(stub.Download(pb.DownloadRequest(object_id=bad))),
            lambda: stub.DeleteObject(pb.DeleteObjectRequest(object_id=bad)),
            lambda: get_session(stub, bad),
            lambda: stub.AbortUploadSession(pb.AbortUploadSessionRequest(upload_id=bad)),
            lambda: upload_chunks(stub, bad, [(0, b"evil")]),
            lambda: stub.ListObjects(pb.ListObjectsRequest(prefix=bad)),
            lambda: stub.ListObjects(pb.ListObjectsRequest(page_token=bad)),
            lambda: stub.ListUploadSessions(pb.ListUploadSessionsRequest(object_id_prefix=bad)),
            lambda: stub.ListUploadSessions(pb.ListUploadSessionsRequest(page_token=bad)),
        ):
            try:
                result = call()
            except grpc.RpcError as exc:
                assert exc.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
                    bad, exc.code(), exc.details())
                continue
            # What succeeded must not have reached anything outside: a prefix lists nothing.
            if isinstance(result, pb.ListObjectsResponse):
                assert list(result.objects) == [], bad
            if isinstance(result, pb.ListUploadSessionsResponse):
                assert list(result.sessions) == [], bad
    assert tree(outside, skip=node.data_dir) == before
    assert set(os.listdir(outside.parent)) == before_up
    assert os.path.lexists("/tmp/evil") == tmp_evil
    # Nothing in the data directory points outside it.
    root = node.data_dir.resolve()
    for path in tree(node.data_dir):
        p = node.data_dir / path
        if p.is_symlink():
            assert root in p.resolve().parents, (path, os.readlink(p))
    assert not any("evil" in name for name in os.listdir(node.data_dir))
    # The real object and session are untouched.
    assert stat(stub, "real") == real
    assert get_session(stub, s.upload_id).state == pb.UploadSession.ACTIVE


def test_readers_see_the_old_or_the_new_version_never_a_mix(node_factory):
    node = node_factory(workers=2)
    writer = node.stub()
    data = payload(50_000, 0)
    versions = {put(writer, "obj", data).object.sha256: data}
    stop = False
    problems: list[str] = []

    def reader(k: int) -> int:
        with grpc.insecure_channel(node.addr,
                                   options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = oss_pb2_grpc.ObjectStorageStub(ch)
            n = 0
            while not stop and n < 500:
                try:
                    got = download_all(stub, "obj", chunk_size=4 * KiB)
                except grpc.RpcError as exc:
                    problems.append(f"reader {k}: {exc.code().name} {exc.details()}")
                    return n
                if sha256_hex(got.data) != got.info.sha256 or got.info.sha256 not in versions:
                    problems.append(f"reader {k}: a download matching no version")
                n += 1
            return n

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        readers = [pool.submit(reader, k) for k in range(4)]
        for i in range(1, 16):
            data = payload(40_000 + 1000 * i, i)
            versions[sha256_hex(data)] = data   # known before it can be seen
            put(writer, "obj", data)
        stop = True
        counts = [r.result(timeout=60) for r in readers]
    assert not problems, problems[:5]
    assert sum(counts) > 0
    assert len(object_files(node.data_dir, object_id="obj")) == 1


def test_upload_id_lookalikes_do_not_reach_a_real_session(node, stub):
    s = create(stub, "obj", 100)
    for bad in (f"../{s.upload_id}", f"{s.upload_id}/", f"./{s.upload_id}", f"{s.upload_id}\x00",
                s.upload_id + "x", s.upload_id.upper() if s.upload_id.upper() != s.upload_id
                else s.upload_id + "0"):
        with expect_error("NOT_FOUND", "SESSION_NOT_FOUND"):
            get_session(stub, bad)
        with expect_error("NOT_FOUND", "SESSION_NOT_FOUND"):
            stub.AbortUploadSession(pb.AbortUploadSessionRequest(upload_id=bad))
    assert get_session(stub, s.upload_id).state == pb.UploadSession.ACTIVE


# --- node info, health, reflection --------------------------------------------------------

def test_page_tokens_work_on_every_worker_and_after_a_restart(node_factory):
    node = node_factory(workers=2)
    stub = node.stub()
    make_objects(stub, [f"obj-{i:02d}" for i in range(6)])
    for i in range(4):
        create(stub, f"obj-{i:02d}", 10)
    chans = channels_by_worker(node, 2)
    try:
        a, b = (oss_pb2_grpc.ObjectStorageStub(c) for c in chans.values())
        token = a.ListObjects(pb.ListObjectsRequest(page_size=2)).next_page_token
        assert [o.object_id for o in b.ListObjects(pb.ListObjectsRequest(
            page_size=2, page_token=token)).objects] == ["obj-02", "obj-03"]
        stoken = a.ListUploadSessions(pb.ListUploadSessionsRequest(page_size=2)).next_page_token
        assert len(b.ListUploadSessions(pb.ListUploadSessionsRequest(
            page_size=2, page_token=stoken)).sessions) == 2
    finally:
        for c in chans.values():
            c.close()
    node.restart()
    stub = node.stub()
    assert [o.object_id for o in stub.ListObjects(pb.ListObjectsRequest(
        page_size=2, page_token=token)).objects] == ["obj-02", "obj-03"]


def test_get_node_info_defaults(node, stub):
    info = node_info(stub)
    assert info.version
    assert {"crc32", "crc32c", "sha256"} <= set(info.checksums)
    assert 4 * KiB <= info.default_chunk_size <= info.max_chunk_size
    assert info.max_object_size > 0
    assert info.session_ttl_ms == 86_400_000
    assert info.stream_idle_timeout_ms == 30_000
    assert info.workers == 1 and info.worker_id == 0


def test_get_node_info_reflects_flags_and_workers(node_factory):
    node = node_factory(workers=2, max_chunk_size=64 * KiB, default_chunk_size=16 * KiB,
                        max_object_size=1 * MiB, session_ttl=2, stream_idle_timeout=1.5)
    seen = set()
    for _ in range(12):
        with grpc.insecure_channel(node.addr,
                                   options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            info = node_info(oss_pb2_grpc.ObjectStorageStub(ch))
        assert info.workers == 2
        assert info.default_chunk_size == 16 * KiB and info.max_chunk_size == 64 * KiB
        assert info.max_object_size == 1 * MiB
        assert info.session_ttl_ms == 2000 and info.stream_idle_timeout_ms == 1500
        seen.add(info.worker_id)
    assert seen <= {0, 1}


@pytest.mark.parametrize("service", ["", "oss.v1.ObjectStorage"])
def test_health_is_serving(node, service):
    with node.channel() as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_server_reflection_lists_the_service(node):
    with node.channel() as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = [reflection_pb2.ServerReflectionRequest(list_services="")]
        [resp] = list(stub.ServerReflectionInfo(iter(req), timeout=10))
        names = {s.name for s in resp.list_services_response.service}
        assert "oss.v1.ObjectStorage" in names
        assert "grpc.health.v1.Health" in names
        req = [reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="oss.v1.ObjectStorage")]
        [resp] = list(stub.ServerReflectionInfo(iter(req), timeout=10))
        assert resp.file_descriptor_response.file_descriptor_proto
