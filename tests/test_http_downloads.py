"""The HTTP face's downloads (API.md, "HTTP"): real nodes, real clients (`curl`, http.client).

GET/HEAD with every header the contract names, single ranges, `curl -C -`, conditional
requests, names with spaces and non-ASCII characters, JSON errors with the contract's reasons,
an overwrite during a long GET, signed URLs and their tampering, drain during a GET, and fuzzed
request lines and headers (never a 500, the node stays up).

The body goes out with `loop.sendfile(..., fallback=False)` on plaintext connections: had the
kernel's sendfile not been used, every GET here would fail instead of silently copying.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.client import Client, NO_RETRY
from node.errors import Forbidden, GenerationMismatch, InvalidArgument, ObjectNotFound
from tests.conftest import RunningNode
from tests.contract import wait_until

KiB = 1024
MiB = 1024 * KiB
CURL = shutil.which("curl")
HTTP = "127.0.0.1:0"  # test nodes serve no HTTP unless asked (conftest)


@pytest.fixture(scope="module")
def web_node(tmp_path_factory):
    node = RunningNode(tmp_path_factory.mktemp("web"),
                       {"workers": 1, "metrics_listen": "127.0.0.1:0", "http_listen": HTTP,
                        "http_cors_origins": "https://app.example"})
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def stored(web_node):
    """Objects every read-only test may use: name -> (bytes, ObjectInfo)."""
    objects = {}
    with Client(web_node.addr) as client:
        for object_id, data, name, ctype in [
            ("plain", os.urandom(300 * KiB + 7), "plain.bin", ""),
            ("photo", os.urandom(64 * KiB), "Ferien Foto – Ägypten 2026.jpg", "image/jpeg"),
            ("empty", b"", "empty.txt", "text/plain"),
        ]:
            info = client.upload(io.BytesIO(data), object_id, file_name=name, content_type=ctype)
            objects[object_id] = (data, info)
    return objects


def request(node, method: str, path: str, headers: dict | None = None,
            body: bytes | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def held_get(node, object_id: str, data: bytes):
    """Store `data`, start a GET of it and read its first MiB: (connection, response, head),
    the rest of the body left unread (a slow client)."""
    with Client(node.addr) as client:
        client.upload(io.BytesIO(data), object_id)
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)
    conn.request("GET", f"/v1/objects/{object_id}")
    response = conn.getresponse()
    return conn, response, response.read(MiB)


def curl(*args: str, cwd=None) -> subprocess.CompletedProcess:
    assert CURL, "curl is needed by these tests (it is on every CI image we use)"
    return subprocess.run([CURL, "-sS", *args], capture_output=True, timeout=60, cwd=cwd)


def metric(node, name: str) -> float:
    import re
    with urllib.request.urlopen(node.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


# --- GET and HEAD ---------------------------------------------------------------------------

def test_get_and_head_answer_the_object_with_every_header(web_node, stored):
    data, info = stored["plain"]
    before = metric(web_node, "mini_oss_http_sent_bytes_total")
    status, headers, body = request(web_node, "GET", "/v1/objects/plain")
    assert status == 200 and body == data
    assert headers["content-length"] == str(len(data))
    assert headers["content-type"] == "application/octet-stream"
    assert headers["etag"] == f'"{info.generation}"'
    assert headers["accept-ranges"] == "bytes"
    assert headers["repr-digest"] == "sha-256=:" + base64.b64encode(
        hashlib.sha256(data).digest()).decode() + ":"
    assert headers["x-mini-oss-generation"] == info.generation
    assert headers["last-modified"].endswith(" GMT")
    assert headers["content-disposition"].startswith('attachment; filename="plain.bin"')
    status, head_headers, body = request(web_node, "HEAD", "/v1/objects/plain")
    assert status == 200 and body == b"" and head_headers["content-length"] == str(len(data))
    assert head_headers["etag"] == headers["etag"]
    wait_until(lambda: metric(web_node, "mini_oss_http_sent_bytes_total") >= before + len(data),
               what="the HTTP bytes to be counted")
    status, headers, body = request(web_node, "GET", "/v1/objects/empty")
    assert status == 200 and body == b"" and headers["content-type"] == "text/plain"


def test_a_name_with_spaces_and_non_ascii_characters_survives(web_node, stored):
    _, info = stored["photo"]
    _, headers, _ = request(web_node, "HEAD", "/v1/objects/photo")
    disposition = headers["content-disposition"]
    assert disposition.isascii()
    encoded = disposition.split("filename*=UTF-8''", 1)[1]
    assert urllib.parse.unquote(encoded) == info.file_name == "Ferien Foto – Ägypten 2026.jpg"
    assert 'filename="Ferien Foto _ _gypten 2026.jpg"' in disposition
    assert headers["content-type"] == "image/jpeg"


def test_curl_ranges_head_and_resume(web_node, stored, tmp_path):
    data, _ = stored["plain"]
    url = f"{web_node.http_url}/v1/objects/plain"
    assert curl("-r", "100-199", url).stdout == data[100:200]
    assert curl("-r", "-50", url).stdout == data[-50:]
    assert curl("-r", f"{len(data) - 10}-", url).stdout == data[-10:]
    head = curl("-I", url).stdout.decode()
    assert head.startswith("HTTP/1.1 200") and f"Content-Length: {len(data)}" in head
    # `curl -C -`: a download cut short continues from the bytes already in the file.
    partial = tmp_path / "plain.bin"
    partial.write_bytes(data[:123_457])
    done = curl("-C", "-", "-o", str(partial), url)
    assert done.returncode == 0, done.stderr
    assert partial.read_bytes() == data


@pytest.mark.parametrize("header, status, part", [
    ("bytes=0-0", 206, slice(0, 1)),
    ("bytes=10-", 206, slice(10, None)),
    ("bytes=-1", 206, slice(-1, None)),
    ("bytes=5-1000000000", 206, slice(5, None)),
    ("bytes=0-1,5-9", 200, slice(None)),     # several ranges: the whole object
    ("bytes=abc", 200, slice(None)),         # malformed: ignored
    ("items=0-5", 200, slice(None)),         # another unit: ignored
    ("bytes=9-3", 200, slice(None)),         # last < first: not a range
])
def test_single_ranges_are_partial_content_others_the_whole_object(web_node, stored, header,
                                                                   status, part):
    data, _ = stored["plain"]
    got, headers, body = request(web_node, "GET", "/v1/objects/plain", {"Range": header})
    assert got == status and body == data[part]
    if status == 206:
        start = range(len(data))[part][0]
        assert headers["content-range"] == f"bytes {start}-{start + len(body) - 1}/{len(data)}"


@pytest.mark.parametrize("header", ["bytes=999999999-", "bytes=-0"])
def test_an_unsatisfiable_range_is_416_with_the_size(web_node, stored, header):
    data, _ = stored["plain"]
    status, headers, body = request(web_node, "GET", "/v1/objects/plain", {"Range": header})
    assert status == 416 and headers["content-range"] == f"bytes */{len(data)}" and body == b""


def test_conditional_requests(web_node, stored):
    data, info = stored["plain"]
    etag = f'"{info.generation}"'
    path = "/v1/objects/plain"
    assert request(web_node, "GET", path, {"If-None-Match": etag})[0] == 304
    assert request(web_node, "GET", path, {"If-None-Match": f'W/{etag}'})[0] == 304
    assert request(web_node, "HEAD", path, {"If-None-Match": '"other", ' + etag})[0] == 304
    assert request(web_node, "GET", path, {"If-None-Match": '"other"'})[0] == 200
    assert request(web_node, "GET", path, {"If-Match": '"other"'})[0] == 412
    assert request(web_node, "GET", path, {"If-Match": f"W/{etag}"})[0] == 412  # strong only
    assert request(web_node, "GET", path, {"If-Match": etag})[0] == 200
    assert request(web_node, "GET", path, {"If-Match": "*"})[0] == 200
    _, headers, _ = request(web_node, "HEAD", path)
    assert request(web_node, "GET", path, {"If-Modified-Since": headers["last-modified"]})[0] == 304
    assert request(web_node, "GET", path,
                   {"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"})[0] == 412
    # If-Range: a stale validator gets the whole object, the current one the range.
    stale = request(web_node, "GET", path, {"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert stale[0] == 200 and stale[2] == data
    fresh = request(web_node, "GET", path, {"Range": "bytes=0-9", "If-Range": etag})
    assert fresh[0] == 206 and fresh[2] == data[:10]
    weak = request(web_node, "GET", path, {"Range": "bytes=0-9", "If-Range": f"W/{etag}"})
    assert weak[0] == 200


def test_errors_are_json_naming_the_contracts_reason(web_node, stored):
    for path, status, code, reason in [
        ("/v1/objects/missing", 404, "NOT_FOUND", "OBJECT_NOT_FOUND"),
        ("/v1/objects/bad%20name", 400, "INVALID_ARGUMENT", "INVALID_NAME"),
        ("/v1/objects/" + "x" * 300, 400, "INVALID_ARGUMENT", "INVALID_NAME"),
        ("/nothing/here", 404, "NOT_FOUND", ""),
    ]:
        got, headers, body = request(web_node, "GET", path)
        assert got == status and headers["content-type"].startswith("application/json"), path
        error = json.loads(body)
        assert (error["code"], error["reason"]) == (code, reason) and error["message"], path
    got, headers, body = request(web_node, "DELETE", "/v1/objects/plain")
    assert got == 405 and json.loads(body)["code"] == "INVALID_ARGUMENT"
    assert request(web_node, "GET", "/v1/objects/plain")[0] == 200  # nothing was deleted


def test_cors_lets_the_configured_origin_read_the_headers(web_node, stored):
    status, headers, _ = request(web_node, "OPTIONS", "/v1/objects/plain", {
        "Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
    assert status == 204 and headers["access-control-allow-origin"] == "https://app.example"
    assert "Repr-Digest" in headers["access-control-expose-headers"]
    _, headers, _ = request(web_node, "GET", "/v1/objects/plain", {"Origin": "https://app.example"})
    assert headers["access-control-allow-origin"] == "https://app.example"
    _, headers, _ = request(web_node, "GET", "/v1/objects/plain", {"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in headers


def test_the_http_port_is_announced_before_grpc_and_in_node_info(web_node):
    log = web_node.log_text()
    assert log.index(f"mini-oss HTTP server started at :{web_node.http_port}") < \
        log.index(f"mini-oss gRPC server started at :{web_node.port}")
    with Client(web_node.addr) as client:
        assert client.node_info().http_port == web_node.http_port


# --- a long GET -----------------------------------------------------------------------------

def test_an_overwrite_during_a_long_get_does_not_change_its_bytes(web_node):
    old, new = os.urandom(8 * MiB), os.urandom(8 * MiB)
    with Client(web_node.addr) as client:
        client.upload(io.BytesIO(old), "long")
        conn = http.client.HTTPConnection("127.0.0.1", web_node.http_port, timeout=30)
        conn.request("GET", "/v1/objects/long")
        response = conn.getresponse()
        head = response.read(64 * KiB)
        client.upload(io.BytesIO(new), "long")  # replaced (and its file freed) mid-response
        rest = response.read()
        conn.close()
    assert head + rest == old
    assert request(web_node, "GET", "/v1/objects/long")[2] == new


def test_drain_lets_a_running_get_finish_and_refuses_new_requests(node_factory):
    node = node_factory(workers=1, grace=20, http_listen=HTTP)
    data = os.urandom(16 * MiB)
    conn, response, head = held_get(node, "drained", data)
    node.proc.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            return request(node, "GET", "/v1/objects/drained")[0] == 503
        except OSError:  # the listening socket is already closed: refused too
            return True
    wait_until(refused, 10, what="new requests to be refused while draining")
    assert head + response.read() == data
    conn.close()
    assert node.proc.wait(30) == 0


def test_drain_answers_a_request_on_an_open_connection_503_while_a_get_runs(node_factory):
    """A connection opened before the drain (a keep-alive one here) gets 503 DRAINING for its
    next request, and is closed after it, while a running GET goes on. Before, the drain left
    such a request unanswered, or dropped it unread (aiohttp#2298). A client that held a
    download and waited on that answer then stalled until the grace cut its download."""
    node = node_factory(workers=1, grace=20, http_listen=HTTP)
    data = os.urandom(16 * MiB)
    conn, response, head = held_get(node, "drained-open", data)
    open_conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=30)
    open_conn.request("HEAD", "/v1/objects/drained-open")
    first = open_conn.getresponse()
    first.read()
    assert first.status == 200
    node.proc.send_signal(signal.SIGTERM)

    def listener_closed() -> bool:
        try:
            socket.create_connection(("127.0.0.1", node.http_port), timeout=5).close()
            return False
        except ConnectionRefusedError:
            return True
    wait_until(listener_closed, 10, what="the HTTP port to stop listening")
    open_conn.request("GET", "/v1/objects/drained-open")
    answer = open_conn.getresponse()
    assert answer.status == 503
    assert json.loads(answer.read())["reason"] == "DRAINING"
    assert answer.getheader("Connection") == "close"
    open_conn.close()
    assert head + response.read() == data
    conn.close()
    assert node.proc.wait(30) == 0


# --- signed URLs and tokens -----------------------------------------------------------------

TOKENS = """\
reader-token-0123456789 read
writer-token-0123456789 write
tenant-token-0123456789 read tenant-a-
"""


@pytest.fixture(scope="module")
def auth_node(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(TOKENS)
    tokens.chmod(0o600)
    node = RunningNode(tmp_path_factory.mktemp("web-auth"),
                       {"workers": 1, "auth_token_file": tokens, "http_listen": HTTP})
    node.start()
    with Client(node.addr, token="writer-token-0123456789") as client:
        for object_id in ("secret", "tenant-a-doc", "other"):
            client.upload(io.BytesIO(object_id.encode() * 100), object_id)
    yield node
    node.stop()


def test_with_tokens_a_download_needs_one_of_the_right_role_and_prefix(auth_node):
    path = "/v1/objects/secret"
    status, _, body = request(auth_node, "GET", path)
    assert status == 401 and json.loads(body)["reason"] == "MISSING_TOKEN"
    status, _, body = request(auth_node, "GET", path, {"Authorization": "Bearer nope"})
    assert status == 401 and json.loads(body)["reason"] == "INVALID_TOKEN"
    status, _, body = request(auth_node, "GET", path, {"Authorization": "Basic abc"})
    assert status == 401
    assert request(auth_node, "GET", path,
                   {"Authorization": "Bearer reader-token-0123456789"})[2] == b"secret" * 100
    tenant = {"Authorization": "Bearer tenant-token-0123456789"}
    assert request(auth_node, "GET", "/v1/objects/tenant-a-doc", tenant)[0] == 200
    status, _, body = request(auth_node, "GET", path, tenant)
    assert status == 403 and json.loads(body)["reason"] == "FORBIDDEN"


def test_a_signed_url_works_with_no_header_until_it_expires(auth_node):
    with Client(auth_node.addr, token="reader-token-0123456789") as client:
        url = client.sign_url("secret")
        short = client.sign_url("secret", expires=1)
    assert url.startswith(f"http://127.0.0.1:{auth_node.http_port}/v1/objects/secret?expires=")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"secret" * 100
    assert curl("-I", url).stdout.decode().startswith("HTTP/1.1 200")  # HEAD is signed as GET

    def expired() -> bool:
        return curl("-o", os.devnull, "-w", "%{http_code}", short).stdout == b"403"
    wait_until(expired, 5, what="the one-second URL to expire")


def test_any_change_to_a_signed_url_is_403(auth_node):
    with Client(auth_node.addr, token="reader-token-0123456789") as client:
        url = client.sign_url("secret")
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    other_path = parts.path.replace("secret", "other")
    forged = [
        (other_path, query),                                          # another object
        (parts.path, {**query, "expires": str(int(query["expires"]) + 3600)}),  # longer life
        (parts.path, {**query, "signature": query["signature"][:-2] + "AA"}),  # altered MAC
        (parts.path, {**query, "generation": "0" * 24}),              # a pin that was not signed
        (parts.path, {k: v for k, v in query.items() if k != "expires"}),
    ]
    for path, fields in forged:
        status, _, body = request(auth_node, "GET", f"{path}?{urllib.parse.urlencode(fields)}")
        assert status == 403 and json.loads(body)["reason"] == "FORBIDDEN", (path, fields)


def test_a_url_pinned_to_a_generation_serves_only_that_version(auth_node):
    with Client(auth_node.addr, token="writer-token-0123456789") as client:
        info = client.upload(io.BytesIO(b"version one"), "pinned")
        url = client.sign_url("pinned", generation=info.generation)
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == b"version one"
        client.upload(io.BytesIO(b"version two"), "pinned")
        with pytest.raises(GenerationMismatch):
            client.sign_url("pinned", generation=info.generation)
    status, _, body = request(auth_node, "GET", url.split(str(auth_node.http_port), 1)[1])
    assert status == 412 and json.loads(body)["reason"] == "GENERATION_MISMATCH"


def test_signing_needs_a_token_that_may_read_the_object(auth_node):
    with Client(auth_node.addr, token="tenant-token-0123456789", retry=NO_RETRY) as client:
        client.sign_url("tenant-a-doc")
        with pytest.raises(Forbidden):
            client.sign_url("secret")
    with Client(auth_node.addr, token="reader-token-0123456789", retry=NO_RETRY) as client:
        with pytest.raises(ObjectNotFound):
            client.sign_url("missing")
        with pytest.raises(InvalidArgument):
            client.sign_url("secret", expires=8 * 24 * 3600)


def test_mini_oss_url_prints_a_url_that_curl_fetches(auth_node, tmp_path):
    import sys
    token = tmp_path / "token"
    token.write_text("reader-token-0123456789\n")
    token.chmod(0o600)
    done = subprocess.run([sys.executable, "-m", "node", "url", "secret", "--addr", auth_node.addr,
                           "--token-file", str(token), "--expires", "600"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert curl(done.stdout.strip()).stdout == b"secret" * 100
    bad = subprocess.run([sys.executable, "-m", "node", "url", "secret", "--expires", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--expires" in bad.stderr


# --- hostile bytes --------------------------------------------------------------------------

def raw(node, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, socket.timeout):
            pass
    return b"".join(chunks)


TOKEN_CHARS = st.sampled_from([b"GET", b"HEAD", b"POST", b"PATCH", b"OPTIONS", b"G\x00T", b"get"])
HEADER_NAMES = st.sampled_from([b"Range", b"If-Range", b"If-Match", b"If-None-Match",
                                b"If-Modified-Since", b"Authorization", b"Origin", b"Content-Length",
                                b"Transfer-Encoding", b"Host", b"X-\xff"])


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=TOKEN_CHARS,
       path=st.one_of(st.just(b"/v1/objects/plain"), st.binary(max_size=40).map(lambda b: b"/" + b)),
       version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"", b"HTTP/1.1\x00"]),
       headers=st.lists(st.tuples(HEADER_NAMES, st.binary(max_size=60)), max_size=5))
def test_fuzzed_request_lines_and_headers_are_never_a_500(web_node, stored, method, path, version,
                                                          headers):
    lines = [method + b" " + path + b" " + version]
    lines += [name + b": " + value.replace(b"\r", b"").replace(b"\n", b"") for name, value in headers]
    answer = raw(web_node, b"\r\n".join(lines) + b"\r\n\r\n")
    if answer:
        status_line = answer.split(b"\r\n", 1)[0]
        assert not status_line.startswith(b"HTTP/1.1 5"), (lines, status_line)


def test_the_node_still_serves_after_the_fuzzing(web_node, stored):
    data, _ = stored["plain"]
    assert request(web_node, "GET", "/v1/objects/plain")[2] == data
    assert web_node.proc.poll() is None


# --- TLS and rate limits, as on gRPC ----------------------------------------------------------

def test_tls_on_the_http_port_with_the_grpc_certificate(node_factory, tmp_path):
    import ssl

    from tests.test_security import self_signed
    cert, key, _ = self_signed(tmp_path)
    node = node_factory(workers=1, tls_cert=cert, tls_key=key, http_listen=HTTP)
    with Client(node.addr, tls_ca=cert) as client:
        client.upload(io.BytesIO(b"over tls" * 1000), "secure")
        url = client.sign_url("secure")
    assert url.startswith(f"https://127.0.0.1:{node.http_port}/")
    context = ssl.create_default_context(cafile=cert)
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        assert response.read() == b"over tls" * 1000  # (TLS encrypts in user space: no sendfile)
    with pytest.raises(http.client.RemoteDisconnected):
        request(node, "GET", "/v1/objects/secure")  # plaintext is not served on a TLS port


def test_the_request_rate_limit_answers_429_with_retry_after(node_factory):
    node = node_factory(workers=1, rate_limit_requests=1, rate_limit_burst=2, http_listen=HTTP)
    with Client(node.addr) as client:
        client.upload(io.BytesIO(b"limited"), "limited")
    statuses = [request(node, "GET", "/v1/objects/limited") for _ in range(6)]
    limited = [(s, h, b) for s, h, b in statuses if s == 429]
    assert limited and all(s in (200, 429) for s, _, _ in statuses)
    status, headers, body = limited[0]
    assert json.loads(body)["reason"] == "RATE_LIMITED" and int(headers["retry-after"]) >= 1


def test_the_signing_key_is_private_and_a_shared_key_file_serves_a_cluster(node_factory, tmp_path):
    shared = tmp_path / "cluster-url.key"
    shared.write_text(os.urandom(32).hex() + "\n")
    shared.chmod(0o600)
    own = node_factory(workers=1, http_listen=HTTP)
    assert ((own.data_dir / "url-signing.key").stat().st_mode & 0o777) == 0o600
    a = node_factory(workers=1, http_listen=HTTP, url_signing_key_file=shared)
    b = node_factory(workers=1, http_listen=HTTP, url_signing_key_file=shared)
    for node in (a, b, own):
        with Client(node.addr) as client:
            client.upload(io.BytesIO(b"same everywhere"), "shared")
    with Client(a.addr) as client:
        path = client.sign_url("shared").split(str(a.http_port), 1)[1]
    assert request(b, "GET", path)[2] == b"same everywhere"  # B checks A's signature
    status, _, body = request(own, "GET", path)  # a node with another key refuses it
    assert status == 403 and json.loads(body)["reason"] == "FORBIDDEN"


def test_open_downloads_count_against_the_clients_stream_cap(node_factory):
    node = node_factory(workers=1, max_streams_per_client=1, http_listen=HTTP)
    data = os.urandom(16 * MiB)
    held, response, head = held_get(node, "capped", data)  # open, its client slow
    status, headers, body = request(node, "GET", "/v1/objects/capped")
    assert status == 429 and json.loads(body)["reason"] == "TOO_MANY_STREAMS"
    assert headers["retry-after"] == "1"
    assert head + response.read() == data  # the held one is unharmed
    held.close()
    assert request(node, "GET", "/v1/objects/capped")[2] == data  # and its place is free again


def test_wget_continues_a_cut_download(web_node, stored, tmp_path):
    data, _ = stored["plain"]
    wget = shutil.which("wget")
    assert wget, "wget is needed by this test (it is on every CI image we use)"
    partial = tmp_path / "plain.bin"
    partial.write_bytes(data[:99_999])
    done = subprocess.run([wget, "-q", "-c", "-O", str(partial),
                           f"{web_node.http_url}/v1/objects/plain"], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert partial.read_bytes() == data


def test_a_fixed_port_another_process_listens_on_is_refused_not_shared(tmp_path):
    import sys
    stranger = socket.socket()
    stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as another node's would be
    stranger.bind(("127.0.0.1", 0))
    stranger.listen()
    port = stranger.getsockname()[1]
    try:
        done = subprocess.run([sys.executable, "-m", "node", "serve", "--listen", "127.0.0.1:0",
                               "--http-listen", f"127.0.0.1:{port}", "--data-dir",
                               str(tmp_path / "d"), "--metrics-listen", "", "--workers", "1"],
                              capture_output=True, text=True, timeout=60)
    finally:
        stranger.close()
    assert done.returncode == 1
    assert f"127.0.0.1:{port} is in use by another process" in done.stderr
    assert "started at" not in done.stdout


def test_a_browsers_resumed_download_continues_or_starts_over(web_node):
    """What a browser sends to resume a cut download: `Range: bytes=N-` with `If-Range` holding
    the first response's ETag. The same version continues (206 from N); an overwrite in between
    starts over (200, the new bytes). A date in If-Range (a client that ignores ETags) always
    starts over: Last-Modified is the same for two versions committed within one second."""
    first = os.urandom(2 * MiB + 5)
    conn, response, head = held_get(web_node, "browser-resume", first)
    etag, modified = response.getheader("ETag"), response.getheader("Last-Modified")
    conn.close()  # the cut: the browser keeps `head` and the validators
    status, headers, rest = request(web_node, "GET", "/v1/objects/browser-resume",
                                    {"Range": f"bytes={len(head)}-", "If-Range": etag})
    assert status == 206
    assert headers["content-range"] == f"bytes {len(head)}-{len(first) - 1}/{len(first)}"
    assert head + rest == first
    status, _, body = request(web_node, "GET", "/v1/objects/browser-resume",
                              {"Range": f"bytes={len(head)}-", "If-Range": modified})
    assert (status, body) == (200, first)
    second = os.urandom(MiB + 3)
    with Client(web_node.addr) as client:
        client.upload(io.BytesIO(second), "browser-resume")
    status, headers, body = request(web_node, "GET", "/v1/objects/browser-resume",
                                    {"Range": f"bytes={len(head)}-", "If-Range": etag})
    assert (status, body) == (200, second), "a stale If-Range must not splice two versions"
