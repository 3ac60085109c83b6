"""Security: bearer tokens (roles, prefixes), TLS, per-client rate limits, no secret in logs.

Pure parts first (the token-file parser, the bucket arithmetic on a fake clock, the worker's
boot checks), then real nodes: one with auth, one with TLS and auth, one with rate limits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import io
import ipaddress
import os
import secrets
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import RunningNode
from node import auth, errors
from node.auth import Role, TokenFileError, bearer_token, fingerprint, load_token_file, parse_tokens
from node.cli import main
from node.client import NO_RETRY, Client
from node.config import Settings
from node.pb import oss_pb2 as pb
from node.pb import oss_pb2_grpc
from node.ratelimit import Bucket, RateLimiter
from node.status import from_rpc_error

MiB = 1024 * 1024

ADMIN = "adm_" + secrets.token_urlsafe(24)
READER = "rd_" + secrets.token_urlsafe(24)
WRITER = "wr_" + secrets.token_urlsafe(24)
TEAM_A = "ta_" + secrets.token_urlsafe(24)  # write, limited to object ids "team-a-*"
WRONG = "xx_" + secrets.token_urlsafe(24)
SECRETS = (ADMIN, READER, WRITER, TEAM_A, WRONG)

TOKEN_FILE = f"""\
# Mini OSS tokens: TOKEN ROLE [PREFIX]
{ADMIN}   admin
{READER}  read     # read-only, everything

{WRITER}  write
{TEAM_A}  write  team-a-
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------
# The token file


def test_parse_token_file_roles_and_prefixes():
    table = parse_tokens(TOKEN_FILE)
    assert len(table) == 4
    assert table.lookup(ADMIN).role is Role.ADMIN and table.lookup(ADMIN).prefix == ""
    assert table.lookup(READER).role is Role.READ
    grant = table.lookup(TEAM_A)
    assert grant.role is Role.WRITE and grant.prefix == "team-a-" and grant.line == 6
    assert grant.fingerprint == fingerprint(TEAM_A) == sha(TEAM_A.encode())[:8]
    assert table.lookup(WRONG) is None and table.lookup("") is None
    # admin implies write implies read
    assert table.lookup(ADMIN).allows(Role.WRITE) and table.lookup(WRITER).allows(Role.READ)
    assert not table.lookup(READER).allows(Role.WRITE)
    assert not table.lookup(WRITER).allows(Role.ADMIN)
    assert grant.covers("team-a-1") and not grant.covers("team-b-1") and not grant.covers("")
    assert "1 admin" in table.summary() and ADMIN not in table.summary()


def test_the_table_keeps_no_token():
    table = parse_tokens(TOKEN_FILE)
    held = repr(vars(table)) + repr(list(table._grants.items()))
    assert not any(token in held for token in SECRETS)


SECRET = "s3cr3t_" + "q" * 20


@pytest.mark.parametrize("line, why", [
    (f"{SECRET}", "found one field"),
    (f"{SECRET} read team- extra", "found 4 fields"),
    ("short read", "16 to 1024 characters"),
    (f"{SECRET}é read", "may only use"),
    (f"{SECRET}=x read", "may only use"),
    (f"{SECRET} superuser", "role must be read, write or admin"),
    (f"{SECRET} READ", "role must be read, write or admin"),
    (f"read {SECRET}", "16 to 1024 characters"),  # swapped: never echo the token
    (f"{SECRET} read team/a", "prefix must be"),
    (f"{SECRET} read {'p' * 129}", "prefix must be"),
])
def test_bad_line_names_the_line_never_the_token(line, why):
    text = f"# header\n{ADMIN} admin\n\n{line}\n"
    with pytest.raises(TokenFileError) as info:
        parse_tokens(text, "tokens.txt")
    message = str(info.value)
    assert message.startswith("tokens.txt line 4: ") and why in message
    assert SECRET not in message and ADMIN not in message and SECRET[:12] not in message


def test_duplicate_and_empty_token_files():
    with pytest.raises(TokenFileError, match="line 3: the same token is already on line 1"):
        parse_tokens(f"{ADMIN} admin\n{READER} read\n{ADMIN} read\n")
    with pytest.raises(TokenFileError, match="no tokens"):
        parse_tokens("# nothing here\n\n   \n")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60),
    st.builds(lambda t, r, p: f"{t} {r} {p}".strip(),
              st.text(alphabet="abcXYZ019-._~+/=", min_size=10, max_size=30),
              st.sampled_from(["read", "write", "admin", "Read", "root", ""]),
              st.sampled_from(["", "a-", "b/", "x y"]))), max_size=8))
def test_parser_returns_a_table_or_a_clean_error(lines):
    text = "\n".join(lines)
    try:
        table = parse_tokens(text, "f")
    except TokenFileError as exc:
        message = str(exc)
        assert message.startswith("f")
        fields = [f for line in lines for f in line.split("#")[0].split() if len(f) >= 12]
        assert not any(f in message for f in fields)
        return
    assert len(table) >= 1


def test_load_token_file_errors_name_the_file(tmp_path):
    with pytest.raises(TokenFileError, match="cannot read token file .*missing.txt"):
        load_token_file(str(tmp_path / "missing.txt"))
    with pytest.raises(TokenFileError, match="not a regular file"):
        load_token_file(str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(TokenFileError, match="not a regular file"):  # and does not hang
        load_token_file(str(fifo))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + ADMIN.encode() + b" admin\n")
    with pytest.raises(TokenFileError, match="is not UTF-8"):
        load_token_file(str(binary))
    good = tmp_path / "tokens"
    good.write_text(TOKEN_FILE)
    assert len(load_token_file(str(good))) == 4


@pytest.mark.parametrize("metadata, expected", [
    ((), errors.MissingToken),
    ((("x-other", "1"),), errors.MissingToken),
    ((("authorization", "Bearer "),), errors.MissingToken),
    ((("authorization", "Basic dXNlcjpwYXNz"),), errors.InvalidToken),
    ((("authorization", "Bearer a b"),), errors.InvalidToken),
    ((("authorization", "Bearer a"), ("authorization", "Bearer b")), errors.InvalidToken),
    ((("authorization", "Bearer abc"),), "abc"),
    ((("authorization", "bearer  abc "),), "abc"),
])
def test_bearer_token(metadata, expected):
    if isinstance(expected, str):
        assert bearer_token(metadata) == expected
    else:
        with pytest.raises(expected):
            bearer_token(metadata)


def test_every_method_has_a_role_and_prefix_fields_exist():
    service = pb.DESCRIPTOR.services_by_name["ObjectStorage"]
    assert {m.name for m in service.methods} == set(auth.METHOD_ROLES)
    for method, field in auth.PREFIX_FIELDS.items():
        request = getattr(pb, service.methods_by_name[method].input_type.name)
        assert field in request.DESCRIPTOR.fields_by_name


# ------------------------------------------------------------------------------------------
# Token buckets on a fake clock


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def limiter(clock: FakeClock, **kw) -> RateLimiter:
    return RateLimiter(Settings(**kw), clock=clock, sleep=clock.sleep)


def test_request_bucket_bursts_then_refuses_with_retry_delay():
    clock = FakeClock()
    lim = limiter(clock, rate_limit_requests=5, rate_limit_burst=2)
    for _ in range(10):  # depth = 5/s * 2 s
        lim.admit("ipv4:10.0.0.1")
    with pytest.raises(errors.RateLimited) as info:
        lim.admit("ipv4:10.0.0.1")
    err = info.value
    assert err.code == "RESOURCE_EXHAUSTED" and err.retryable
    assert err.retry_delay == pytest.approx(0.2)
    assert err.metadata["limit"] == "requests"
    lim.admit("ipv4:10.0.0.2")  # another client has its own bucket
    clock.now += err.retry_delay  # waiting what RetryInfo said is always enough
    lim.admit("ipv4:10.0.0.1")
    with pytest.raises(errors.RateLimited):
        lim.admit("ipv4:10.0.0.1")


def test_depth_is_at_least_one_request():
    clock = FakeClock()
    lim = limiter(clock, rate_limit_requests=0.1, rate_limit_burst=0.5)
    lim.admit("c")
    with pytest.raises(errors.RateLimited) as info:
        lim.admit("c")
    assert info.value.retry_delay == pytest.approx(10.0)


def test_limits_off_admit_everything():
    clock = FakeClock()
    lim = limiter(clock)
    for _ in range(1000):
        lim.admit("c")
    asyncio.run(lim.pace("c", 10 * MiB))
    assert clock.slept == [] and lim.tracked == 0


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 50), burst=st.floats(0.1, 4),
       gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=200))
def test_admitted_requests_never_exceed_depth_plus_rate_times_time(rate, burst, gaps):
    clock = FakeClock()
    lim = limiter(clock, rate_limit_requests=rate, rate_limit_burst=burst)
    start, admitted = clock.now, 0
    for gap in gaps:
        clock.now += gap
        try:
            lim.admit("c")
            admitted += 1
        except errors.RateLimited as err:
            assert err.retry_delay > 0
            assert err.retry_delay <= 1 / rate + 0.001
    assert admitted <= max(1.0, rate * burst) + rate * (clock.now - start) + 1e-6


@settings(max_examples=100, deadline=None)
@given(rate=st.integers(1000, 10 * MiB), burst=st.floats(0.1, 4),
       chunks=st.lists(st.integers(0, 4 * MiB), min_size=1, max_size=40))
def test_pacing_keeps_a_stream_to_the_byte_rate(rate, burst, chunks):
    clock = FakeClock()
    lim = limiter(clock, rate_limit_bytes=rate, rate_limit_burst=burst)
    start = clock.now

    async def stream():
        for n in chunks:
            await lim.pace("c", n)
    asyncio.run(stream())
    depth = max(1, rate * burst)
    # The bytes let through by now are at most one burst plus the rate times the time.
    assert sum(chunks) <= depth + rate * (clock.now - start) + 1e-6 * sum(chunks) + 1e-3
    assert all(s > 0 for s in clock.slept)


def test_deep_byte_debt_refuses_new_calls_until_within_one_burst():
    clock = FakeClock()
    lim = limiter(clock, rate_limit_bytes=1000, rate_limit_burst=2)  # depth 2000 bytes
    lim.admit("c")
    # Two streams at once each charge a chunk before either sleeps.
    assert [lim.charge("c", 2000) for _ in range(2)] == pytest.approx([0.0, 2.0])
    lim.admit("c")  # 2000 behind: one burst exactly, still in
    assert lim.charge("c", 500) == pytest.approx(2.5)  # a third stream
    with pytest.raises(errors.RateLimited) as info:
        lim.admit("c")
    assert info.value.retry_delay == pytest.approx(0.5)
    assert info.value.metadata["limit"] == "bytes"
    clock.now += info.value.retry_delay
    lim.admit("c")
    lim.admit("d")  # another client is not affected


def test_bucket_arithmetic():
    bucket = Bucket(rate=10, depth=20, now=0)
    assert bucket.take(15, 0) == 0 and bucket.level == 5
    assert bucket.take(10, 0) == pytest.approx(0.5) and bucket.level == 5  # nothing taken
    assert bucket.charge(25, 0) == pytest.approx(2.0) and bucket.level == -20
    assert not bucket.full(3.9) and bucket.full(4.0)
    bucket.refill(100)
    assert bucket.level == 20  # never above depth
    with pytest.raises(ValueError):
        Bucket(rate=0, depth=1, now=0)


def test_idle_buckets_are_dropped_and_memory_is_bounded():
    clock = FakeClock()
    lim = RateLimiter(Settings(rate_limit_requests=10, rate_limit_bytes=1000),
                      clock=clock, sleep=clock.sleep, sweep_interval=5, max_clients=50)
    for i in range(40):
        lim.admit(f"ipv4:10.0.0.{i}")
    assert lim.tracked == 40
    clock.now += 5  # every bucket has refilled: all of them are idle
    lim.admit("ipv4:10.0.1.1")
    assert lim.tracked == 1
    for i in range(200):  # many clients at once: never more than max_clients
        lim.admit(f"ipv4:10.1.{i // 256}.{i % 256}")
        assert lim.tracked <= 50
    clock.now += 0.01
    lim.charge("busy", 50_000)  # deep in debt: not idle, kept by a sweep
    clock.now += 5
    lim.admit("new")
    assert lim.tracked == 2


# ------------------------------------------------------------------------------------------
# Worker boot checks (in process: the worker raises before it builds anything)


def self_signed(tmp_path, name: str = "localhost") -> tuple[str, str, bytes]:
    """A self-signed certificate for `name` and 127.0.0.1: (cert path, key path, cert PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(pem)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path), pem


def test_worker_refuses_to_boot_without_usable_tls_files(tmp_path):
    from node.server import TlsConfigError, Worker

    cert, key, _ = self_signed(tmp_path)
    other_cert, other_key, _ = self_signed(tmp_path, "other")
    base = Settings(data_dir=str(tmp_path / "data"))
    cases = [
        (dict(tls_cert=str(tmp_path / "nope.crt"), tls_key=key), "cannot read TLS certificate .*nope.crt"),
        (dict(tls_cert=cert, tls_key=str(tmp_path / "nope.key")), "cannot read TLS key .*nope.key"),
        (dict(tls_cert=cert, tls_key=other_key), "cannot be used together"),
        (dict(tls_cert=key, tls_key=cert), "cannot be used together"),
    ]
    for overrides, message in cases:
        with pytest.raises(TlsConfigError, match=message):
            Worker(dataclasses.replace(base, **overrides))
    with pytest.raises(TokenFileError, match="cannot read token file"):
        Worker(dataclasses.replace(base, auth_token_file=str(tmp_path / "no-tokens")))
    assert not (tmp_path / "data").exists()  # refused before the store was opened


# ------------------------------------------------------------------------------------------
# A node with auth


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(TOKEN_FILE)
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def auth_node(tmp_path_factory, token_file):
    node = RunningNode(tmp_path_factory.mktemp("auth-node"),
                       {"workers": 1, "auth_token_file": token_file, "log_level": "DEBUG"})
    node.start()
    yield node
    node.stop()


def client(node, token, **kw) -> Client:
    return Client(node.addr, token=token, retry=NO_RETRY, **kw)


def put(c: Client, object_id: str, data: bytes = b"hello") -> pb.ObjectInfo:
    return c.upload(io.BytesIO(data), object_id)


def raw_error(call) -> errors.OssError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return from_rpc_error(info.value)


def test_missing_and_wrong_tokens_are_unauthenticated(auth_node):
    with auth_node.channel() as channel:
        stub = oss_pb2_grpc.ObjectStorageStub(channel)
        calls = {
            "unary": lambda md: stub.StatObject(pb.StatObjectRequest(object_id="x"), metadata=md),
            "node info": lambda md: stub.GetNodeInfo(pb.GetNodeInfoRequest(), metadata=md),
            "upload stream": lambda md: stub.Upload(iter([pb.UploadChunk(upload_id="u")]),
                                                    metadata=md),
            "download stream": lambda md: list(stub.Download(
                pb.DownloadRequest(object_id="x"), metadata=md)),
        }
        for name, call in calls.items():
            err = raw_error(lambda: call(None))
            assert isinstance(err, errors.MissingToken), name  # typed: ErrorInfo was there
            assert err.code == "UNAUTHENTICATED"
            err = raw_error(lambda: call((("authorization", f"Bearer {WRONG}"),)))
            assert isinstance(err, errors.InvalidToken), name
            err = raw_error(lambda: call((("authorization", f"Basic {ADMIN}"),)))
            assert isinstance(err, errors.InvalidToken), name
            assert WRONG not in err.message and ADMIN not in err.message


def test_a_refused_request_is_never_decoded_an_allowed_malformed_one_is_invalid(auth_node):
    with auth_node.channel() as channel:
        stat = channel.unary_unary("/oss.v1.ObjectStorage/StatObject",
                                   request_serializer=None, response_deserializer=None)
        garbage = b"\x0a\xff\xff"  # field 1, a length running far past the end
        assert isinstance(raw_error(lambda: stat(garbage)), errors.MissingToken)
        for token in (ADMIN, TEAM_A):  # the prefix check lets a Malformed request through
            err = raw_error(lambda: stat(garbage, metadata=(("authorization", f"Bearer {token}"),)))
            assert err.code == "INVALID_ARGUMENT", err


def test_health_and_reflection_need_no_token(auth_node):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with auth_node.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "oss.v1.ObjectStorage"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
                health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(reflect.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in answers[0].list_services_response.service}
        assert "oss.v1.ObjectStorage" in names


def test_roles(auth_node):
    with client(auth_node, WRITER) as writer, client(auth_node, READER) as reader, \
            client(auth_node, ADMIN) as admin:
        info = put(writer, "roles-1", b"written")
        assert info.size == 7
        assert writer.node_info().auth_required
        # read: every read method works
        assert reader.stat("roles-1").sha256 == sha(b"written")
        assert [o.object_id for o in reader.list_objects(prefix="roles-")] == ["roles-1"]
        sink = io.BytesIO()
        reader.download("roles-1", sink)
        assert sink.getvalue() == b"written"
        session = writer.create_session("roles-2", "f", 3)
        assert reader.get_session(session.upload_id).object_id == "roles-2"
        assert [s.upload_id for s in reader.list_sessions("roles-")] == [session.upload_id]
        # ... and no write method
        refused = {
            "create": lambda: reader.create_session("roles-3", "f", 1),
            "upload": lambda: put(reader, "roles-3"),
            "abort": lambda: reader.abort_session(session.upload_id),
            "delete": lambda: reader.delete("roles-1"),
        }
        for name, call in refused.items():
            with pytest.raises(errors.Forbidden) as info:
                call()
            assert info.value.code == "PERMISSION_DENIED", name
        with auth_node.channel() as channel:  # Upload on a session, read token: FORBIDDEN
            stub = oss_pb2_grpc.ObjectStorageStub(channel)
            err = raw_error(lambda: stub.Upload(
                iter([pb.UploadChunk(upload_id=session.upload_id, offset=0, data=b"abc")]),
                metadata=(("authorization", f"Bearer {READER}"),)))
            assert isinstance(err, errors.Forbidden)
        assert reader.get_session(session.upload_id).uploaded_offset == 0
        writer.abort_session(session.upload_id)
        admin.delete("roles-1")
        with pytest.raises(errors.ObjectNotFound):
            reader.stat("roles-1")


def test_prefix_limited_token(auth_node):
    with client(auth_node, TEAM_A) as team, client(auth_node, ADMIN) as admin:
        # inside the prefix: everything a write token may do
        info = put(team, "team-a-report", b"quarterly")
        assert team.stat("team-a-report").generation == info.generation
        sink = io.BytesIO()
        team.download("team-a-report", sink)
        assert sink.getvalue() == b"quarterly"
        assert [o.object_id for o in team.list_objects(prefix="team-a-")] == ["team-a-report"]
        assert [o.object_id for o in team.list_objects(prefix="team-a-rep")] == ["team-a-report"]
        mine = team.create_session("team-a-draft", "d.txt", 10)
        assert [s.upload_id for s in team.list_sessions("team-a-")] == [mine.upload_id]
        team.abort_session(mine.upload_id)
        assert team.node_info().version

        # outside it: FORBIDDEN, whether the object exists or not
        put(admin, "team-b-secret", b"not yours")
        outside = {
            "create": lambda: team.create_session("team-b-x", "f", 1),
            "stat": lambda: team.stat("team-b-secret"),
            "stat missing": lambda: team.stat("team-b-missing"),
            "download": lambda: team.download("team-b-secret", io.BytesIO()),
            "delete": lambda: team.delete("team-b-secret"),
            "list all": lambda: list(team.list_objects()),
            "list wider": lambda: list(team.list_objects(prefix="team-")),
            "list other": lambda: list(team.list_objects(prefix="team-b-")),
            "sessions all": lambda: list(team.list_sessions()),
            "sessions other": lambda: list(team.list_sessions("team-b-")),
        }
        for name, call in outside.items():
            with pytest.raises(errors.Forbidden) as err:
                call()
            assert err.value.metadata.get("prefix") == "team-a-", name
        assert admin.stat("team-b-secret").size == 9

        team.delete("team-a-report")


def test_put_object_needs_a_write_token_and_its_prefix(auth_node):
    def put_with(token: str, object_id: str):
        return lambda: stub.PutObject(
            pb.PutObjectRequest(object_id=object_id, file_name="n.txt", data=b"one call"),
            metadata=(("authorization", f"Bearer {token}"),))

    with auth_node.channel() as channel:
        stub = oss_pb2_grpc.ObjectStorageStub(channel)
        for token, object_id in ((READER, "put-r"), (TEAM_A, "team-b-put")):
            err = raw_error(put_with(token, object_id))
            assert isinstance(err, errors.Forbidden), (token[:3], err)
        assert isinstance(raw_error(put_with(WRONG, "put-x")), errors.InvalidToken)
        assert put_with(WRITER, "put-w")().object.size == 8
        assert put_with(TEAM_A, "team-a-put")().object.size == 8
    with client(auth_node, ADMIN) as admin:
        assert [o.object_id for o in admin.list_objects(prefix="put-")] == ["put-w"]
        with pytest.raises(errors.ObjectNotFound):
            admin.stat("team-b-put")
        admin.delete("put-w")
        admin.delete("team-a-put")


def test_an_upload_id_alone_opens_no_session_outside_the_prefix(auth_node):
    """Trust first, finding 1: a team-a token that learns a team-b upload_id can neither see,
    abort nor write that session (it used to commit its own bytes into team-b's object)."""
    with client(auth_node, TEAM_A) as team, client(auth_node, ADMIN) as admin, \
            auth_node.channel() as channel:
        theirs = admin.create_session("team-b-pending", "f", 4)
        stub = admin_stub = oss_pb2_grpc.ObjectStorageStub(channel)
        bearer = (("authorization", f"Bearer {TEAM_A}"),)
        calls = {
            "get": lambda: stub.GetUploadSession(pb.GetUploadSessionRequest(upload_id=theirs.upload_id),
                                                 metadata=bearer),
            "abort": lambda: stub.AbortUploadSession(pb.AbortUploadSessionRequest(upload_id=theirs.upload_id),
                                                     metadata=bearer),
            "upload": lambda: stub.Upload(iter([pb.UploadChunk(upload_id=theirs.upload_id, offset=0,
                                                               data=b"evil")]), metadata=bearer),
        }
        for name, call in calls.items():
            err = raw_error(call)
            assert (err.code, err.reason) == ("PERMISSION_DENIED", "FORBIDDEN"), name
            assert err.metadata.get("prefix") == "team-a-", name
        upload_err = raw_error(calls["upload"])
        assert upload_err.metadata.get("uploaded_offset") == "0"  # not the owner's offset
        # The session is untouched: still ACTIVE at 0, and its owner finishes it.
        assert admin.get_session(theirs.upload_id).state == pb.UploadSession.ACTIVE
        assert admin.get_session(theirs.upload_id).uploaded_offset == 0
        done = admin_stub.Upload(iter([pb.UploadChunk(upload_id=theirs.upload_id, offset=0, data=b"mine")]),
                                 metadata=(("authorization", f"Bearer {ADMIN}"),))
        assert done.object.sha256 == sha(b"mine")
        # Its own sessions still work by upload_id.
        mine = team.create_session("team-a-own", "f", 3)
        assert team.get_session(mine.upload_id).object_id == "team-a-own"
        team.abort_session(mine.upload_id)
        admin.delete("team-b-pending")


@pytest.mark.parametrize("suffix", ["\U0010FFFF", "\U0010FFFF\U0010FFFF", "\uD7FF", "\uFFFF",
                                    "\u00ff", "~", "\x7f"])
def test_listings_with_odd_prefixes_stay_inside_the_token_prefix(auth_node, suffix):
    """Trust first, finding 1: "team-a-" + U+10FFFF listed every object after it (team-b's
    included), and "team-a-" + U+D7FF answered INTERNAL. A listing returns exactly the rows
    that start with its prefix; no object id can start with these, so: nothing."""
    with client(auth_node, TEAM_A) as team, client(auth_node, ADMIN) as admin:
        put(admin, "team-b-listed", b"x")
        put(admin, "team-a-seen", b"y")
        secret = admin.create_session("team-b-active", "f", 4)
        try:
            prefix = "team-a-" + suffix
            assert [o.object_id for o in team.list_objects(prefix=prefix)] == []
            assert [s.upload_id for s in team.list_sessions(prefix)] == []
            assert [o.object_id for o in admin.list_objects(prefix=prefix)] == []
            assert [s.object_id for s in admin.list_sessions(prefix)] == []
        finally:
            admin.abort_session(secret.upload_id)
            admin.delete("team-b-listed")
            admin.delete("team-a-seen")


def test_an_upload_refused_by_auth_still_names_a_resume_point(auth_node):
    """API.md: every failed Upload carries uploaded_offset; one refused before the node looked
    at the session (no token, a bad one, a role too low) carries 0."""
    with client(auth_node, ADMIN) as admin, auth_node.channel() as channel:
        s = admin.create_session("refused-upload", "f", 4)
        stub = oss_pb2_grpc.ObjectStorageStub(channel)
        for metadata, reason in (((), "MISSING_TOKEN"),
                                 ((("authorization", f"Bearer {WRONG}"),), "INVALID_TOKEN"),
                                 ((("authorization", f"Bearer {READER}"),), "FORBIDDEN")):
            err = raw_error(lambda: stub.Upload(iter([pb.UploadChunk(upload_id=s.upload_id, offset=0,
                                                                     data=b"data")]), metadata=metadata))
            assert err.reason == reason
            assert err.metadata.get("uploaded_offset") == "0", reason
        admin.abort_session(s.upload_id)


def test_cli_with_tokens(auth_node, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MINI_OSS_TOKEN", raising=False)
    monkeypatch.delenv("MINI_OSS_TOKEN_FILE", raising=False)
    src = tmp_path / "cli.txt"
    src.write_bytes(b"from the command line\n")
    assert main(["put", str(src), "--addr", auth_node.addr, "--token", WRITER]) == 0
    capsys.readouterr()

    assert main(["stat", "cli.txt", "--addr", auth_node.addr, "--token", READER, "--json"]) == 0
    assert '"object_id": "cli.txt"' in capsys.readouterr().out

    token_path = tmp_path / "token"
    token_path.write_text(READER + "\n")
    assert main(["stat", "cli.txt", "--addr", auth_node.addr, "--token-file", str(token_path)]) == 0
    monkeypatch.setenv("MINI_OSS_TOKEN", READER)
    assert main(["ls", "--addr", auth_node.addr, "--prefix", "cli"]) == 0
    monkeypatch.delenv("MINI_OSS_TOKEN")
    monkeypatch.setenv("MINI_OSS_TOKEN_FILE", str(token_path))
    assert main(["stat", "cli.txt", "--addr", auth_node.addr]) == 0
    monkeypatch.delenv("MINI_OSS_TOKEN_FILE")
    capsys.readouterr()

    failures = [
        (["stat", "cli.txt", "--token", WRONG], "UNAUTHENTICATED INVALID_TOKEN"),
        (["stat", "cli.txt"], "UNAUTHENTICATED MISSING_TOKEN"),
        (["rm", "cli.txt", "--token", READER], "PERMISSION_DENIED FORBIDDEN"),
        (["stat", "cli.txt", "--token", f"{WRONG} x"], "printable ASCII"),
    ]
    for argv, expected in failures:
        assert main(argv + ["--addr", auth_node.addr]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1, err
        assert err.startswith("mini-oss: error: ") and expected in err
        assert not any(token in err for token in SECRETS)
    assert main(["stat", "x", "--addr", auth_node.addr, "--token", READER,
                 "--token-file", str(token_path)]) == 2  # one or the other


def test_no_secret_in_logs(auth_node, tmp_path):
    """Last of the auth node's tests: after every call above, and a few more with each token
    by the command line in a subprocess (as `ps` would see it), nothing in the node's output
    (logged at DEBUG) or in the CLI's is a token."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    outputs = []
    for token in SECRETS:
        result = subprocess.run([sys.executable, "-m", "node", "ls", "--prefix", "x", "--addr",
                                 auth_node.addr, "--token", token],
                                capture_output=True, text=True, env=env, timeout=60)
        outputs.append(result.stdout + result.stderr)
    cli_text = "".join(outputs)
    assert "INVALID_TOKEN" in cli_text and "FORBIDDEN" in cli_text
    auth_node.stop()
    deadline = time.monotonic() + 5
    while "all workers stopped" not in auth_node.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = auth_node.log_text()
    assert "refused" in log and f"sha256:{fingerprint(WRONG)}" in log  # refusals are logged...
    for token in SECRETS:  # ... by fingerprint only
        assert token not in log and token not in cli_text
        assert token[4:16] not in log  # not even a slice of one


def test_bad_token_file_stops_serve_naming_the_line(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{ADMIN} admin\n{READER} reader\n")
    tokens.chmod(0o600)
    result = subprocess.run(
        [sys.executable, "-m", "node", "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--workers", "1",
         "--data-dir", str(tmp_path / "data"), "--metrics-listen", "",
         "--auth-token-file", str(tokens)],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mini-oss: error: workers cannot boot: TokenFileError")
    assert "line 2: the role must be read, write or admin" in last and str(tokens) in last
    assert ADMIN not in result.stderr + result.stdout and READER not in result.stderr


# ------------------------------------------------------------------------------------------
# TLS (with auth: the token rides in call credentials)


def test_tls(node_factory, tmp_path, token_file, capsys):
    cert, key, pem = self_signed(tmp_path)
    node = node_factory(workers=1, tls_cert=cert, tls_key=key, auth_token_file=token_file)
    data = os.urandom(300_000)
    with Client(node.addr, tls_ca=cert, token=WRITER) as c:
        info = put(c, "tls-1", data)
        assert info.sha256 == sha(data)
    with Client(f"localhost:{node.port}", tls_ca=pem, token=READER) as c:
        sink = io.BytesIO()
        c.download("tls-1", sink)
        assert sink.getvalue() == data
    with Client(node.addr, tls_ca=cert, tls_server_name="localhost", token=READER) as c:
        assert c.stat("tls-1").size == len(data)
    with Client(node.addr, tls_ca=cert, retry=NO_RETRY) as c:  # TLS, but no token
        with pytest.raises(errors.MissingToken):
            c.stat("tls-1")
    refused = {
        "plaintext": Client(node.addr, token=READER, retry=NO_RETRY),
        "untrusted": Client(node.addr, tls=True, token=READER, retry=NO_RETRY, timeout=5),
        "wrong name": Client(node.addr, tls_ca=cert, tls_server_name="evil.example",
                             token=READER, retry=NO_RETRY, timeout=5),
    }
    for name, c in refused.items():
        with c, pytest.raises(errors.OssError) as info:
            c.stat("tls-1")
        assert info.value.code == "UNAVAILABLE" and not info.value.reason, name
    # the command line
    token_path = tmp_path / "token"
    token_path.write_text(READER)
    assert main(["stat", "tls-1", "--addr", node.addr, "--tls-ca", cert,
                 "--token-file", str(token_path), "--json"]) == 0
    assert '"object_id": "tls-1"' in capsys.readouterr().out
    assert main(["stat", "tls-1", "--addr", node.addr, "--token-file", str(token_path)]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
    # health over TLS, no token
    creds = grpc.ssl_channel_credentials(root_certificates=pem)
    with grpc.secure_channel(node.addr, creds) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == \
            health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------------------------------
# Rate limits


@pytest.fixture(scope="module")
def limited_node(tmp_path_factory, token_file):
    node = RunningNode(tmp_path_factory.mktemp("limited-node"),
                       {"workers": 1, "rate_limit_requests": 5, "rate_limit_bytes": "2M",
                        "rate_limit_burst": 1, "auth_token_file": token_file})
    node.start()
    yield node
    node.stop()


def burst(node, token: str, calls: int = 20) -> list[errors.OssError]:
    with node.channel() as channel:
        stub = oss_pb2_grpc.ObjectStorageStub(channel)
        failed = []
        for _ in range(calls):
            try:
                stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=10,
                                 metadata=(("authorization", f"Bearer {token}"),))
            except grpc.RpcError as exc:
                failed.append(from_rpc_error(exc))
        return failed


def test_request_rate_limit(limited_node):
    # Refused calls count too: guessing tokens is no faster than any other call.
    failed = burst(limited_node, WRONG)  # depth is 5 requests (5/s for 1 s)
    assert {type(e) for e in failed} == {errors.InvalidToken, errors.RateLimited}
    assert sum(isinstance(e, errors.RateLimited) for e in failed) >= 10
    limited = burst(limited_node, READER)
    assert len(limited) >= 10
    for err in limited:
        assert isinstance(err, errors.RateLimited) and err.code == "RESOURCE_EXHAUSTED"
        assert 0 < err.retry_delay <= 0.25 and err.retryable
    # The client library honours RetryInfo: every call goes through, at the rate.
    with Client(limited_node.addr, token=READER) as c:
        started = time.monotonic()
        for _ in range(8):
            assert c.node_info().rate_limit_requests == 5
        assert time.monotonic() - started >= 0.5  # the bucket was empty: ~8 / 5 s


def test_byte_rate_paces_uploads_and_downloads(limited_node, tmp_path):
    size, rate, burst = 6 * MiB, 2 * MiB, 2 * MiB  # burst: 2 MiB/s for 1 s
    data = os.urandom(size)
    with Client(limited_node.addr, token=WRITER) as c:
        started = time.monotonic()
        info = put(c, "paced", data)
        took = time.monotonic() - started
        assert info.sha256 == sha(data)
        assert took >= 0.9 * (size - burst) / rate, took  # at most one burst goes faster
        started = time.monotonic()
        c.download("paced", tmp_path / "paced.out")
        took = time.monotonic() - started
        assert (tmp_path / "paced.out").read_bytes() == data
        assert took >= 0.9 * (size - burst) / rate, took
        started = time.monotonic()  # one-call puts are paced by their bytes too
        for i in range(3):
            assert c.put_object(f"paced-{i}", data[:MiB]).size == MiB
        took = time.monotonic() - started
        assert took >= 0.9 * (3 * MiB - burst) / rate, took

