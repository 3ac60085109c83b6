"""tus 1.0.0 at /v1/tus/ (API.md "HTTP", **Uploads by tus**): real nodes, real clients.

The header rules first (node.http.tus_rules, pure, with Hypothesis), then one module-scoped
node driven by tuspy, by plain http.client requests and by gRPC on the same sessions, then a
node with tokens. Every refusal is checked for what it leaves behind: the durable offset and
the part file are unchanged, and nothing commits.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import secrets
import socket
import urllib.request
import zlib

import pytest
from hypothesis import given, strategies as st
from tusclient import client as tus_client

from node.client import Client
from node.errors import InvalidArgument, InvalidName
from node.http import tus_rules
from node.pb import oss_pb2 as pb
from tests.conftest import RunningNode
from tests.contract import (COMMITTED, KiB, MiB, create, expect_error, get_session, held_stream,
                            part_size, payload, sha256_hex, stat, upload_data, wait_until)

TUS = "/v1/tus/"
V = {"Tus-Resumable": "1.0.0"}
OCTETS = {**V, "Content-Type": "application/offset+octet-stream"}
ORIGIN = "https://app.example"
MAX_OBJECT = 4 * MiB


# --- the header rules (pure) -----------------------------------------------------------------

def meta(**pairs: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


@given(st.dictionaries(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e,
                                             blacklist_characters=","), min_size=1, max_size=12),
                       st.text(min_size=1, max_size=40), max_size=6))
def test_metadata_round_trips(pairs):
    assert tus_rules.parse_metadata(tus_rules.encode_metadata(pairs)) == pairs


@given(st.text(max_size=80))
def test_metadata_parses_or_refuses(header):
    """Any header: a dict of strings, or InvalidArgument; never anything else."""
    try:
        parsed = tus_rules.parse_metadata(header)
    except InvalidArgument:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in parsed.items())


@pytest.mark.parametrize("header", ["a !!!", "a YQ==,a YQ==", "k\u00e9y YQ==", " , ", "a /w=="])
def test_bad_metadata_is_invalid_argument(header):
    with pytest.raises(InvalidArgument):
        tus_rules.parse_metadata(header)


def test_metadata_value_may_be_absent():
    assert tus_rules.parse_metadata("is_confidential,name bmFtZQ==") == {
        "is_confidential": "", "name": "name"}


@pytest.mark.parametrize("value", [None, "", "-1", "+1", "1.0", "0x10", "1 2", "9" * 20])
def test_integers_are_bare_non_negative_decimals(value):
    with pytest.raises(InvalidArgument):
        tus_rules.parse_integer(value, "Upload-Length")


def test_integer_parses():
    assert tus_rules.parse_integer(" 42 ", "Upload-Offset") == 42


def test_checksum_headers():
    body = b"hello tus"
    sha1 = tus_rules.parse_checksum("sha1 " + base64.b64encode(hashlib.sha1(body).digest()).decode())
    crc = tus_rules.parse_checksum(
        "CRC32 " + base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode())
    assert sha1.matches(body) and crc.matches(body)
    assert not sha1.matches(body + b"!") and not crc.matches(body + b"!")
    assert tus_rules.parse_checksum(None) is None
    for bad in ("md5 " + base64.b64encode(b"x" * 16).decode(), "sha1 not-base64!", "sha1 AAAA",
                "crc32", "sha256 " + base64.b64encode(b"x" * 32).decode()):
        with pytest.raises(InvalidArgument):
            tus_rules.parse_checksum(bad)


def test_object_id_comes_from_object_id_or_a_valid_filename():
    assert tus_rules.object_id_of({"object_id": "a", "filename": "b.txt"}) == "a"
    assert tus_rules.object_id_of({"filename": "report-2026.pdf"}) == "report-2026.pdf"
    for pairs in ({}, {"filename": "my report.pdf"}, {"filename": ".hidden"}):
        with pytest.raises(InvalidName):
            tus_rules.object_id_of(pairs)


# --- one node ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tus_node(tmp_path_factory):
    node = RunningNode(tmp_path_factory.mktemp("tus"), {
        "workers": 1, "metrics_listen": "127.0.0.1:0", "max_object_size": MAX_OBJECT,
        "default_chunk_size": "64K", "http_cors_origins": ORIGIN, "http_listen": "127.0.0.1:0"})
    node.start()
    yield node
    # Nothing a client sent here was a bug of the node's: no 500, no logged traceback.
    served = node.log_text()
    node.stop()
    assert "Traceback" not in served, served


@pytest.fixture
def stub(tus_node):
    with tus_node.channel() as channel:
        from node.pb import oss_pb2_grpc
        yield oss_pb2_grpc.ObjectStorageStub(channel)


class Answer:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        raw = response.read()
        is_json = "json" in (response.getheader("Content-Type") or "")
        self.json = json.loads(raw) if raw and is_json else None

    @property
    def offset(self) -> int:
        return int(self.headers["Upload-Offset"])

    @property
    def reason(self) -> str:
        return self.json["reason"] if self.json else ""


def call(node, method: str, path: str, body: bytes | None = None, headers=None, *,
         chunked: bool = False) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)
    try:
        if chunked:
            conn.request(method, path, body=iter([body[i:i + 1000] for i in range(0, len(body), 1000)]),
                         headers=headers or {}, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers or {})
        return Answer(conn.getresponse())
    finally:
        conn.close()


def new_upload(node, object_id: str, length: int, **extra: str) -> str:
    answer = call(node, "POST", TUS, headers={
        **V, "Upload-Length": str(length), "Upload-Metadata": meta(object_id=object_id, **extra)})
    assert answer.status == 201, answer.json
    assert answer.headers["Location"].startswith(TUS) and answer.offset == 0
    assert answer.headers["Tus-Resumable"] == "1.0.0"
    return answer.headers["Location"]


def patch(node, url: str, offset: int, data: bytes, **headers: str) -> Answer:
    return call(node, "PATCH", url, data, {**OCTETS, "Upload-Offset": str(offset), **headers})


def head(node, url: str, headers=V) -> Answer:
    return call(node, "HEAD", url, headers=headers)


def upload_id(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def received(node) -> float:
    with urllib.request.urlopen(node.metrics_url, timeout=10) as response:
        text = response.read().decode()
    match = re.search(r"^mini_oss_http_received_bytes_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def downloaded(node, object_id: str, tmp_path) -> bytes:
    with Client(node.addr) as client:
        client.download(object_id, tmp_path / object_id)
    return (tmp_path / object_id).read_bytes()


def test_options_announces_the_protocol(tus_node):
    answer = call(tus_node, "OPTIONS", TUS)
    assert answer.status == 204
    assert answer.headers["Tus-Resumable"] == "1.0.0" and answer.headers["Tus-Version"] == "1.0.0"
    assert answer.headers["Tus-Extension"] == ("creation,creation-with-upload,termination,"
                                               "expiration,checksum")
    assert answer.headers["Tus-Max-Size"] == str(MAX_OBJECT)
    assert answer.headers["Tus-Checksum-Algorithm"] == "sha1,crc32"


def test_tuspy_upload_is_the_object_grpc_downloads(tus_node, tmp_path):
    data = payload(MiB + 12_345, seed=1)
    source = tmp_path / "photo.jpg"
    source.write_bytes(data)
    client = tus_client.TusClient(tus_node.http_url + TUS)
    # sha1 Upload-Checksum on every PATCH: the verified path, held in memory, then written.
    uploader = client.uploader(file_path=str(source), chunk_size=256 * KiB, upload_checksum=True,
                               metadata={"object_id": "tuspy-photo", "filename": "photo.jpg",
                                         "content_type": "image/jpeg", "sha256": sha256_hex(data)})
    uploader.upload()
    assert downloaded(tus_node, "tuspy-photo", tmp_path) == data
    with Client(tus_node.addr) as grpc_client:
        info = grpc_client.stat("tuspy-photo")
    assert (info.sha256, info.size, info.file_name, info.content_type) == (
        sha256_hex(data), len(data), "photo.jpg", "image/jpeg")
    assert info.generation == upload_id(uploader.url)


def test_tuspy_resumes_and_sends_only_the_rest(tus_node, tmp_path):
    data = payload(2 * MiB + 777, seed=2)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    client = tus_client.TusClient(tus_node.http_url + TUS)
    first = client.uploader(file_path=str(source), chunk_size=256 * KiB,
                            metadata={"object_id": "tuspy-resumed"})
    for _ in range(3):
        first.upload_chunk()  # then the "client" dies: a new uploader knows only the URL
    assert head(tus_node, first.url).offset == 3 * 256 * KiB
    before = received(tus_node)
    second = client.uploader(file_path=str(source), chunk_size=MiB, url=first.url)
    assert second.offset == 3 * 256 * KiB  # asked the node (HEAD), not recomputed
    second.upload()
    rest = len(data) - 3 * 256 * KiB
    # Counted by the node as the bytes came off the wire (metrics merge with a delay).
    wait_until(lambda: received(tus_node) - before >= rest, what="the bytes to be counted")
    assert received(tus_node) - before == rest
    assert downloaded(tus_node, "tuspy-resumed", tmp_path) == data


def test_creation_with_upload_and_a_zero_byte_object(tus_node, stub):
    data = payload(100 * KiB, seed=3)
    answer = call(tus_node, "POST", TUS, data, {
        **OCTETS, "Upload-Length": str(len(data)), "Upload-Metadata": meta(object_id="cwu")})
    assert answer.status == 201 and answer.offset == len(data)
    assert "Upload-Expires" not in answer.headers  # committed: it can no longer expire
    assert stat(stub, "cwu").sha256 == sha256_hex(data)
    # Part of it in the POST, the rest by PATCH.
    answer = call(tus_node, "POST", TUS, data[:1000], {
        **OCTETS, "Upload-Length": str(len(data)), "Upload-Metadata": meta(object_id="cwu-2")})
    assert answer.status == 201 and answer.offset == 1000 and "Upload-Expires" in answer.headers
    assert patch(tus_node, answer.headers["Location"], 1000, data[1000:]).status == 204
    assert stat(stub, "cwu-2").sha256 == sha256_hex(data)
    # Upload-Length 0 is complete when created.
    answer = call(tus_node, "POST", TUS, headers={**V, "Upload-Length": "0",
                                                  "Upload-Metadata": meta(filename="empty.txt")})
    assert answer.status == 201 and answer.offset == 0
    assert stat(stub, "empty.txt").size == 0


def test_tus_session_finished_by_grpc(tus_node, stub):
    data = payload(300 * KiB, seed=4)
    url = new_upload(tus_node, "tus-then-grpc", len(data), filename="x.bin")
    assert patch(tus_node, url, 0, data[:100 * KiB]).offset == 100 * KiB
    session = get_session(stub, upload_id(url))
    assert (session.uploaded_offset, session.object_id, session.file_name) == (
        100 * KiB, "tus-then-grpc", "x.bin")
    done = upload_data(stub, session.upload_id, data, 64 * KiB, start=100 * KiB)
    assert done.session.state == COMMITTED and done.object.sha256 == sha256_hex(data)
    answer = head(tus_node, url)
    assert answer.status == 200 and answer.offset == len(data) == int(answer.headers["Upload-Length"])


def test_grpc_session_finished_by_tus(tus_node, stub, tmp_path):
    data = payload(300 * KiB, seed=5)
    session = create(stub, "grpc-then-tus", data, sha256=sha256_hex(data))
    upload_data(stub, session.upload_id, data, 64 * KiB, end=128 * KiB)
    url = TUS + session.upload_id
    answer = head(tus_node, url)
    assert answer.status == 200 and answer.offset == 128 * KiB
    assert answer.headers["Cache-Control"] == "no-store"
    assert tus_rules.parse_metadata(answer.headers["Upload-Metadata"]) == {
        "object_id": "grpc-then-tus", "filename": "blob.bin"}
    assert patch(tus_node, url, 128 * KiB, data[128 * KiB:]).offset == len(data)
    assert get_session(stub, session.upload_id).state == COMMITTED
    assert downloaded(tus_node, "grpc-then-tus", tmp_path) == data
    # A retry of the last PATCH after a lost response: nothing to add, same answer.
    assert patch(tus_node, url, len(data), b"").status == 204
    answer = patch(tus_node, url, len(data), b"more")
    assert answer.status == 413 and answer.reason == "PAST_END"


def test_wrong_upload_offset_is_409_with_the_current_one(tus_node, stub):
    url = new_upload(tus_node, "offsets", 10_000)
    assert patch(tus_node, url, 0, b"a" * 4000).offset == 4000
    for wrong in (0, 3999, 4001):
        answer = patch(tus_node, url, wrong, b"b" * 100)
        assert (answer.status, answer.reason, answer.offset) == (409, "OFFSET_MISMATCH", 4000)
    assert head(tus_node, url).offset == 4000
    assert part_size(tus_node.data_dir, upload_id(url)) == 4000


def test_busy_session_is_423(tus_node, stub):
    session = create(stub, "busy", 10_000)
    call_, feed = held_stream(stub, session.upload_id, b"x" * 1000)
    try:
        answer = patch(tus_node, TUS + session.upload_id, 0, b"y" * 1000)
        assert (answer.status, answer.reason) == (423, "SESSION_BUSY")
    finally:
        feed.put(None)
    assert call_.result(timeout=30).session.uploaded_offset == 1000  # the stream's bytes, not ours
    assert patch(tus_node, TUS + session.upload_id, 1000, b"z" * 9000).status == 204


def test_unknown_uploads_are_404(tus_node):
    for url in (TUS + "0" * 24, TUS + "not-an-upload-id"):
        assert head(tus_node, url).status == 404
        answer = patch(tus_node, url, 0, b"x")
        assert (answer.status, answer.reason) == (404, "SESSION_NOT_FOUND")
        assert call(tus_node, "DELETE", url, headers=V).status == 404
    assert call(tus_node, "GET", TUS + "0" * 24, headers=V).status == 405


def test_delete_then_head_is_410(tus_node, stub):
    url = new_upload(tus_node, "terminated", 5000)
    assert patch(tus_node, url, 0, b"q" * 2000).status == 204
    assert call(tus_node, "DELETE", url, headers=V).status == 204
    answer = head(tus_node, url)
    assert answer.status == 410 and answer.headers["Tus-Resumable"] == "1.0.0"
    answer = patch(tus_node, url, 2000, b"q" * 3000)
    assert (answer.status, answer.reason) == (410, "SESSION_NOT_FOUND")
    assert call(tus_node, "DELETE", url, headers=V).status == 204  # a retried DELETE
    assert get_session(stub, upload_id(url)).state == pb.UploadSession.ABORTED
    assert part_size(tus_node.data_dir, upload_id(url)) == 0  # its bytes are freed
    # X-HTTP-Method-Override, for clients that cannot send DELETE.
    url = new_upload(tus_node, "terminated-2", 5)
    answer = call(tus_node, "POST", url, headers={**V, "X-HTTP-Method-Override": "DELETE"})
    assert answer.status == 204 and head(tus_node, url).status == 410


def test_upload_length_over_the_max_is_413(tus_node):
    answer = call(tus_node, "POST", TUS, headers={**V, "Upload-Length": str(MAX_OBJECT + 1),
                                                  "Upload-Metadata": meta(object_id="huge")})
    assert (answer.status, answer.reason) == (413, "TOO_LARGE")


def test_bad_checksum_is_460_and_keeps_nothing(tus_node, stub):
    data = payload(200 * KiB, seed=6)
    url = new_upload(tus_node, "checksummed", len(data))
    assert patch(tus_node, url, 0, data[:50 * KiB]).status == 204
    piece = data[50 * KiB:120 * KiB]
    good_sha1 = "sha1 " + base64.b64encode(hashlib.sha1(piece).digest()).decode()
    bad_crc = "crc32 " + base64.b64encode((zlib.crc32(piece) ^ 1).to_bytes(4, "big")).decode()
    for header in (bad_crc, "sha1 " + base64.b64encode(hashlib.sha1(b"other").digest()).decode()):
        answer = patch(tus_node, url, 50 * KiB, piece, **{"Upload-Checksum": header})
        assert (answer.status, answer.reason, answer.offset) == (460, "CHECKSUM_MISMATCH", 50 * KiB)
        assert head(tus_node, url).offset == 50 * KiB
        assert part_size(tus_node.data_dir, upload_id(url)) == 50 * KiB  # not a byte kept
    # Too big to hold while verifying: refused on its Content-Length, before a byte is read.
    with socket.create_connection(("127.0.0.1", tus_node.http_port)) as sock:
        sock.sendall((f"PATCH {url} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                      f"Upload-Offset: {50 * KiB}\r\nUpload-Checksum: {good_sha1}\r\n"
                      "Content-Type: application/offset+octet-stream\r\n"
                      f"Content-Length: {64 * MiB + 1}\r\n\r\n").encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 413 ")
    answer = patch(tus_node, url, 50 * KiB, piece,
                   **{"Upload-Checksum": "md5 AAAAAAAAAAAAAAAAAAAAAA=="})
    assert answer.status == 400 and "sha1,crc32" in answer.json["message"]
    assert patch(tus_node, url, 50 * KiB, piece, **{"Upload-Checksum": good_sha1}).offset == 120 * KiB
    rest = data[120 * KiB:]
    crc = "crc32 " + base64.b64encode(zlib.crc32(rest).to_bytes(4, "big")).decode()
    assert patch(tus_node, url, 120 * KiB, rest, **{"Upload-Checksum": crc}).offset == len(data)
    assert stat(stub, "checksummed").sha256 == sha256_hex(data)


def test_sha256_mismatch_at_commit_is_460_and_ends_the_upload(tus_node, stub):
    data = payload(70 * KiB, seed=7)
    url = new_upload(tus_node, "wrong-hash", len(data), sha256=sha256_hex(b"something else"))
    answer = patch(tus_node, url, 0, data)
    assert (answer.status, answer.reason) == (460, "SHA256_MISMATCH")
    assert head(tus_node, url).status == 410
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "wrong-hash")


def test_bytes_past_upload_length_commit_nothing(tus_node, stub):
    # One piece (1 MiB) exactly: the extra bytes arrive in a piece of their own.
    data = payload(MiB, seed=8)
    url = new_upload(tus_node, "past-end", len(data))
    answer = patch(tus_node, url, 0, data + b"extra")  # Content-Length says so up front
    assert (answer.status, answer.reason, answer.offset) == (413, "PAST_END", 0)
    # Chunked: no length up front. The piece that would complete the object waits for the
    # end of the body, so the extra bytes are seen before anything commits.
    answer = call(tus_node, "PATCH", url, data + b"extra",
                  {**OCTETS, "Upload-Offset": "0"}, chunked=True)
    assert (answer.status, answer.reason) == (413, "PAST_END")
    with expect_error("NOT_FOUND", "OBJECT_NOT_FOUND"):
        stat(stub, "past-end")
    offset = head(tus_node, url).offset
    assert offset < len(data)
    answer = call(tus_node, "PATCH", url, data[offset:], {**OCTETS, "Upload-Offset": str(offset)},
                  chunked=True)
    assert answer.status == 204 and answer.offset == len(data)
    assert stat(stub, "past-end").sha256 == sha256_hex(data)


def test_protocol_refusals(tus_node):
    url = new_upload(tus_node, "refusals", 100)
    for headers in ({}, {"Tus-Resumable": "0.2.2"}):
        answer = call(tus_node, "HEAD", url, headers=headers)
        assert answer.status == 412 and answer.headers["Tus-Version"] == "1.0.0"
        answer = call(tus_node, "POST", TUS, headers={**headers, "Upload-Length": "1",
                                                      "Upload-Metadata": meta(object_id="r")})
        assert answer.status == 412 and answer.headers["Tus-Resumable"] == "1.0.0"
    answer = call(tus_node, "PATCH", url, b"x", {**V, "Upload-Offset": "0",
                                                 "Content-Type": "application/octet-stream"})
    assert answer.status == 415
    assert patch(tus_node, url, 0, b"x", **{"Upload-Offset": "-1"}).status == 400
    for headers in ({"Upload-Defer-Length": "1"}, {"Upload-Length": "abc"}, {},
                    {"Upload-Length": "5", "Upload-Metadata": "object_id ***"},
                    {"Upload-Length": "5", "Upload-Metadata": meta(filename="a b.txt")},
                    {"Upload-Length": "5", "Upload-Metadata": meta(object_id="../etc")}):
        if "Upload-Metadata" not in headers:
            headers["Upload-Metadata"] = meta(object_id="fine")
        answer = call(tus_node, "POST", TUS, headers={**V, **headers})
        assert answer.status == 400, (headers, answer.json)
    assert head(tus_node, url).offset == 0


def test_a_sliced_session_takes_bytes_through_its_slices(tus_node, stub):
    data = payload(256 * KiB + 100, seed=9)
    session = create(stub, "sliced-tus", data, chunk_size=64 * KiB, slices=2)
    assert len(session.slices) == 2
    answer = patch(tus_node, TUS + session.upload_id, 0, data[:10])
    assert answer.status == 400 and "slices" in answer.json["message"]
    for piece in session.slices:
        body = data[piece.slice_offset:piece.slice_offset + piece.file_size]
        assert patch(tus_node, TUS + piece.upload_id, 0, body).offset == piece.file_size
    done = stub.Upload(iter([pb.UploadChunk(upload_id=session.upload_id, offset=len(data))]),
                       timeout=30)
    assert done.session.state == COMMITTED and done.object.sha256 == sha256_hex(data)


def test_a_client_gone_mid_patch_leaves_the_upload_resumable(tus_node, stub):
    data = payload(3 * MiB, seed=10)
    url = new_upload(tus_node, "disconnected", len(data))
    sent = 2 * MiB + 1000
    with socket.create_connection(("127.0.0.1", tus_node.http_port)) as sock:
        sock.sendall((f"PATCH {url} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                      f"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                      f"Content-Length: {len(data)}\r\n\r\n").encode() + data[:sent])
        # Gone once the node holds the session (it writes what arrives).
        wait_until(lambda: part_size(tus_node.data_dir, upload_id(url)) >= MiB, what="bytes")
    # The node checkpoints what it verified and lets go of the session: an empty PATCH at 0
    # is then refused for its offset (409), no longer for a held session (423).
    wait_until(lambda: patch(tus_node, url, 0, b"").status == 409, what="the session released")
    offset = head(tus_node, url).offset
    assert 0 < offset <= sent
    assert patch(tus_node, url, offset, data[offset:]).offset == len(data)
    assert stat(stub, "disconnected").sha256 == sha256_hex(data)
    assert "Error handling request" not in tus_node.log_text()  # a routine disconnect


def test_cors_preflight_for_a_tus_post(tus_node):
    answer = call(tus_node, "OPTIONS", TUS, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "tus-resumable,upload-length,upload-metadata"})
    assert answer.status == 204
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    allowed = answer.headers["Access-Control-Allow-Headers"].lower()
    assert all(h in allowed for h in ("tus-resumable", "upload-length", "upload-metadata",
                                      "upload-offset", "upload-checksum", "content-type"))
    answer = call(tus_node, "POST", TUS, headers={**V, "Origin": ORIGIN, "Upload-Length": "3",
                                                  "Upload-Metadata": meta(object_id="cors")})
    assert answer.status == 201
    exposed = answer.headers["Access-Control-Expose-Headers"]
    assert all(h in exposed for h in ("Location", "Upload-Offset", "Tus-Resumable"))
    answer = call(tus_node, "OPTIONS", TUS, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in answer.headers


# --- tokens --------------------------------------------------------------------------------------

READER = "rd_" + secrets.token_urlsafe(24)
WRITER = "wr_" + secrets.token_urlsafe(24)
TEAM_A = "ta_" + secrets.token_urlsafe(24)  # write, limited to object ids "team-a-*"


@pytest.fixture(scope="module")
def auth_node(tmp_path_factory):
    root = tmp_path_factory.mktemp("tus-auth")
    tokens = root / "tokens.txt"
    tokens.write_text(f"{READER} read\n{WRITER} write\n{TEAM_A} write team-a-\n")
    tokens.chmod(0o600)
    node = RunningNode(root / "data", {"workers": 1, "auth_token_file": str(tokens),
                                       "http_listen": "127.0.0.1:0"})
    node.start()
    yield node
    node.stop()


def bearer(token: str) -> dict[str, str]:
    return {**V, "Authorization": f"Bearer {token}"}


def test_tokens_and_prefixes(auth_node):
    create_headers = {"Upload-Length": "10", "Upload-Metadata": meta(object_id="team-b-file")}
    answer = call(auth_node, "POST", TUS, headers={**V, **create_headers})
    assert (answer.status, answer.reason) == (401, "MISSING_TOKEN")
    answer = call(auth_node, "POST", TUS, headers={**bearer(READER), **create_headers})
    assert (answer.status, answer.reason) == (403, "FORBIDDEN")
    answer = call(auth_node, "POST", TUS, headers={**bearer(TEAM_A), **create_headers})
    assert (answer.status, answer.reason) == (403, "FORBIDDEN")
    answer = call(auth_node, "POST", TUS, headers={**bearer(WRITER), **create_headers})
    assert answer.status == 201
    other = answer.headers["Location"]
    # Team A knows the other tenant's upload id: it still reaches nothing of it.
    for method in ("HEAD", "PATCH", "DELETE"):
        answer = call(auth_node, method, other, b"x" * 10 if method == "PATCH" else None,
                      {**bearer(TEAM_A), **OCTETS, "Upload-Offset": "0"})
        assert answer.status == 403, method
    assert call(auth_node, "PATCH", other, b"x" * 10,
                {**bearer(READER), **OCTETS, "Upload-Offset": "0"}).status == 403
    assert call(auth_node, "HEAD", other, headers=bearer(READER)).offset == 0  # read may look
    assert call(auth_node, "PATCH", other, b"x" * 10,
                {**bearer(WRITER), **OCTETS, "Upload-Offset": "0"}).offset == 10
    answer = call(auth_node, "POST", TUS, b"mine", {
        **bearer(TEAM_A), **OCTETS, "Upload-Length": "4",
        "Upload-Metadata": meta(object_id="team-a-file")})
    assert answer.status == 201 and answer.offset == 4
    with Client(auth_node.addr, token=READER) as client:
        assert client.stat("team-a-file").size == 4


def test_no_token_is_401_before_any_lookup(auth_node):
    """Without a token the answer is 401 for any id: it tells nothing about which exist."""
    assert call(auth_node, "HEAD", TUS + "0" * 24, headers=V).status == 401
    assert call(auth_node, "DELETE", TUS + "0" * 24, headers=V).status == 401
