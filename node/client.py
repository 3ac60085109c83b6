"""The Python client library of a Mini OSS node: resumable, verified uploads and downloads.

Theory of operation
-------------------
`Client` wraps one or more synchronous gRPC channels to a node. Several channels are opened as
separate TCP connections (a local subchannel pool and a distinct channel argument each), because
the node spreads *connections* over its worker processes; calls go round-robin over them.
Several nodes serving one namespace are given as one string, "a:8080,b:8080": the channels
alternate between the addresses, so calls go round robin over the nodes, and a retry after
UNAVAILABLE goes to the next one.

Every failed call is turned into the typed `node.errors.OssError` by `node.status`, so callers
never see `grpc.RpcError`. What is retried follows the retry contract of API.md:

* `err.retryable` (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, RESOURCE_EXHAUSTED with RetryInfo) is
  retried with exponential backoff and jitter, bounded by `RetryPolicy`. DeleteObject is retried
  only when the node itself refused it (the error carries a reason, e.g. DRAINING), so a lost
  answer never turns a done delete into NOT_FOUND. A repeated CreateUploadSession at worst leaves
  an empty session that expires, so it is retried like the reads.
* Upload and download streams also resume after CANCELLED (the server or the network cut them).
* A transport UNAVAILABLE before this client has ever reached the node (connection refused, wrong
  address) is final at once: nobody wants a typo retried for twenty seconds. With several
  addresses, only once each of them has failed so.
* The attempt and deadline limits of `RetryPolicy` count failures *without progress*: a stream
  that moved the durable offset forward resets them, so a long transfer over a flaky link goes on
  as long as it advances.

Security: `token=` is sent as `authorization: Bearer <token>` on every call: inside the
channel's call credentials over TLS (`tls=True` with the system's roots, or `tls_ca=` with
your own; `tls_server_name=` overrides the name checked in the node's certificate), as plain
call metadata over a plaintext channel. RESOURCE_EXHAUSTED/RATE_LIMITED carries a RetryInfo;
the retrier waits at least that long before the next try.

Upload: a session is created (or continued by `upload_id`), then `Upload` streams chunks of the
session's chunk size from `uploaded_offset`, each with its CRC-32. The SHA-256 of the whole object
is computed in one pass by `UploadReader`, which remembers how far it has hashed: bytes sent again
after a rewind are not hashed again, and a continued upload hashes the prefix while skipping it.
The digest rides on the last chunk. After a resumable failure the client asks GetUploadSession and
resends from its `uploaded_offset`; a COMMITTED session is answered by one more `Upload` call that
returns the object. The request stream is a generator that gRPC consumes in its own thread; a lock
and a stop flag make sure an abandoned stream never touches the source once the next one starts.

Download: chunks are checked for offset order and CRC-32, the whole-object SHA-256 against
`ObjectInfo.sha256`. A cut stream is re-issued from the next needed offset, pinned to the first
answer's generation with `if_generation_match`, so a replaced object fails with
GENERATION_MISMATCH instead of mixing versions. A download to a path goes to a temporary file in
the same directory and is renamed into place only once complete and verified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import itertools
import os
import random
import tempfile
import threading
import time
from typing import IO, Any, BinaryIO, Callable, Iterator, Mapping

import grpc

from node import errors
from node.checksums import crc32
from node.errors import OssError, TransportError
from node.pb import oss_pb2, oss_pb2_grpc
from node.status import from_rpc_error

__all__ = ["Client", "RetryPolicy", "NO_RETRY", "UploadReader", "DownloadStream", "SourceError",
           "ObjectInfo", "UploadSession", "NodeInfo"]

KiB = 1024
MiB = 1024 * KiB

ObjectInfo = oss_pb2.ObjectInfo
UploadSession = oss_pb2.UploadSession
NodeInfo = oss_pb2.NodeInfo
ACTIVE = oss_pb2.UploadSession.ACTIVE
COMMITTED = oss_pb2.UploadSession.COMMITTED

Progress = Callable[[int, int], Any]

#: gRPC message limit of the client: far above any chunk a node accepts (max_chunk_size <= 64 MiB).
MESSAGE_LIMIT = 64 * MiB + 1 * MiB

#: Channel options. Keepalive pings every 30 s notice a connection that died unseen under a long
#: stream (the node accepts pings every 5 s, with or without calls or data; a server that wants
#: fewer answers GOAWAY "too_many_pings" and gRPC doubles the interval by itself). Pings are
#: allowed without data frames, so a long download on a dead connection is noticed too.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
)

#: `upload` sends an object up to this size in one PutObject call (API.md "One-call put") when
#: it needs no session: no precondition, one stream, nothing to continue. Half the round trips
#: and one catalog transaction; larger objects gain nothing and would sit whole in memory.
SMALL_PUT_MAX = 1 * MiB

#: How often the waiting thread reports upload progress.
_POLL_SECONDS = 0.1


class SourceError(ValueError):
    """The upload source cannot give the bytes needed (not seekable for a rewind, or too short)."""


# --------------------------------------------------------------------------------------------
# Retry policy


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How failed calls and cut streams are retried (exponential backoff with jitter).

    `max_attempts` counts tries of one operation without progress (1 = never retry);
    `deadline` is the most seconds spent retrying without progress (None = no limit). A stream
    whose durable offset advanced resets both.
    """

    max_attempts: int = 10
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    deadline: float | None = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")

    def backoff(self, retry: int, rand: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (1 = the first): half to all of the cap."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** max(0, retry - 1))
        rand = random.random() if rand is None else rand
        return cap * (0.5 + 0.5 * rand)


NO_RETRY = RetryPolicy(max_attempts=1)


#: How long an address that failed at the transport is skipped when there are others.
ADDRESS_PAUSE = 5.0


class _Retrier:
    """Counts the failures of one operation and sleeps between them, or gives up."""

    def __init__(self, policy: RetryPolicy, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 rand: Callable[[], float] = random.random) -> None:
        self.policy, self._clock, self._sleep, self._rand = policy, clock, sleep, rand
        self.failures = 0
        self.since = clock()

    def progressed(self) -> None:
        self.failures = 0
        self.since = self._clock()

    def wait(self, err: BaseException) -> None:
        """Sleep before the next try, or raise `err` when the policy is spent."""
        self.failures += 1
        if self.failures >= self.policy.max_attempts:
            raise err
        delay = self.policy.backoff(self.failures, self._rand())
        retry_delay = getattr(err, "retry_delay", None)
        if retry_delay:
            delay = max(delay, retry_delay)
        deadline = self.policy.deadline
        if deadline is not None and self._clock() + delay - self.since > deadline:
            raise err
        self._sleep(delay)


def resumable(err: OssError) -> bool:
    """May a cut Upload/Download stream be resumed after this error?"""
    return err.retryable or err.code == "CANCELLED"


# --------------------------------------------------------------------------------------------
# One-pass hashing reader


class UploadReader:
    """Reads an upload source at object offsets, hashing every byte exactly once.

    `fileobj` holds the object from its current position on (`size` bytes). `hashed_upto` is how
    far the SHA-256 has got: a `seek` back below it (a resend) is not hashed again, a `seek`
    forward past it reads and hashes the bytes in between. A source that cannot seek can only
    go forward; a needed rewind raises `SourceError`. Not thread-safe by itself: the upload
    holds `lock` around every seek and read.
    """

    _SKIP_BLOCK = 1 * MiB

    def __init__(self, fileobj: IO[bytes], size: int, *, hash: bool = True) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self._f = fileobj
        self.size = size
        self._hasher = hashlib.sha256() if hash else None
        self.hashed_upto = 0
        self.position = 0
        self.lock = threading.Lock()
        self.seekable = _is_seekable(fileobj)
        self._base = fileobj.tell() if self.seekable else 0

    @property
    def hashing(self) -> bool:
        return self._hasher is not None

    def seek(self, offset: int) -> None:
        """Make `offset` the next byte `read` returns (hashing any unhashed bytes before it)."""
        if not 0 <= offset <= self.size:
            raise ValueError(f"offset {offset} outside 0..{self.size}")
        if self._hasher is not None and offset > self.hashed_upto:
            self._move(self.hashed_upto)
            while self.position < offset:
                self.read(min(self._SKIP_BLOCK, offset - self.position))
            return
        self._move(offset)

    def _move(self, offset: int) -> None:
        if offset == self.position:
            return
        if self.seekable:
            self._f.seek(self._base + offset)
            self.position = offset
            return
        if offset < self.position:
            raise SourceError(f"the upload must go back to byte {offset} (the node has only that "
                              f"much), but the source is not seekable (at byte {self.position})")
        while self.position < offset:
            self.read(min(self._SKIP_BLOCK, offset - self.position))

    def read(self, n: int) -> bytes:
        """The next min(n, size - position) bytes; `SourceError` if the source ends sooner."""
        n = max(0, min(n, self.size - self.position))
        if n == 0:
            return b""
        data = self._f.read(n)
        if data is None:
            data = b""
        if len(data) < n:
            parts = [data]
            got = len(data)
            while got < n:
                more = self._f.read(n - got)
                if not more:
                    raise SourceError(f"the source ended at byte {self.position + got}, "
                                      f"but the upload declared {self.size} bytes")
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        end = self.position + n
        if self._hasher is not None and end > self.hashed_upto:
            # seek() guarantees position <= hashed_upto here.
            self._hasher.update(memoryview(data)[self.hashed_upto - self.position:])
            self.hashed_upto = end
        self.position = end
        return data

    def hexdigest(self) -> str:
        if self._hasher is None:
            raise ValueError("this reader does not hash")
        if self.hashed_upto != self.size:
            raise ValueError(f"hashed {self.hashed_upto} of {self.size} bytes")
        return self._hasher.hexdigest()


def _connect_failure(err: OssError) -> bool:
    """A transport error raised before any connection was made (gRPC's own wording)."""
    return "failed to connect" in err.message


def _is_seekable(f: IO[bytes]) -> bool:
    try:
        if not f.seekable():
            return False
        f.tell()
        return True
    except (AttributeError, OSError, ValueError):
        return False


def _remaining_size(f: IO[bytes]) -> int:
    if not _is_seekable(f):
        raise SourceError("the source is not seekable and its size is unknown: pass size=")
    pos = f.tell()
    end = f.seek(0, os.SEEK_END)
    f.seek(pos)
    return end - pos


@contextlib.contextmanager
def _open_source(source: str | os.PathLike | IO[bytes]) -> Iterator[tuple[IO[bytes], str]]:
    if isinstance(source, (str, bytes, os.PathLike)):
        path = os.fsdecode(source)
        with open(path, "rb") as f:
            yield f, os.path.basename(path)
    else:
        name = getattr(source, "name", "")
        yield source, os.path.basename(name) if isinstance(name, str) else ""


# --------------------------------------------------------------------------------------------
# Credentials


class _BearerToken(grpc.AuthMetadataPlugin):
    """Adds the token to every call of a TLS channel (gRPC sends call credentials only over
    a secure channel, never in plaintext)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def __call__(self, context: grpc.AuthMetadataContext,
                 callback: grpc.AuthMetadataPluginCallback) -> None:
        callback(self._metadata, None)

    def __repr__(self) -> str:
        return "_BearerToken(<hidden>)"


def check_token(token: str) -> str:
    """The token with surrounding white space removed; ValueError (never naming the token) if
    it cannot travel in a header."""
    token = token.strip()
    if not token:
        raise ValueError("the token is empty")
    if not all(32 < ord(c) < 127 for c in token):
        raise ValueError("the token may only hold printable ASCII characters, no spaces")
    return token


def _credentials(token: str | None, tls: bool, tls_ca: str | os.PathLike | bytes | None
                 ) -> tuple[grpc.ChannelCredentials | None, tuple[tuple[str, str], ...] | None]:
    """(channel credentials or None for plaintext, metadata to send with each call or None).

    With TLS the token rides in call credentials composed into the channel's; in plaintext
    (a node on the same host, or behind a TLS-terminating proxy) it is plain call metadata.
    """
    metadata = None
    if token is not None:
        metadata = (("authorization", f"Bearer {check_token(token)}"),)
    if not tls:
        return None, metadata
    roots = None
    if isinstance(tls_ca, bytes):
        roots = tls_ca
    elif tls_ca is not None:
        with open(tls_ca, "rb") as f:
            roots = f.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    if metadata is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.metadata_call_credentials(_BearerToken(metadata), name="bearer"))
    return credentials, None


# --------------------------------------------------------------------------------------------
# The client


class Client:
    """A connection (or several) to one node. Thread-safe; use as a context manager."""

    def __init__(self, addr: str, *, channels: int = 1, retry: RetryPolicy | None = None,
                 timeout: float | None = 60.0,
                 options: tuple[tuple[str, Any], ...] = (), token: str | None = None,
                 tls: bool = False, tls_ca: str | os.PathLike | bytes | None = None,
                 tls_server_name: str | None = None) -> None:
        """`token`: sent as `authorization: Bearer <token>` on every call. `tls`: connect with
        TLS, trusting the system's roots, or only the PEM certificates of `tls_ca` (a path, or
        the PEM bytes; giving it implies TLS); `tls_server_name`: the name to expect in the
        node's certificate instead of the host of `addr` (implies TLS)."""
        if channels < 1:
            raise ValueError("channels must be >= 1")
        self.addr = addr
        #: The nodes' addresses ("a:8080,b:8080" is two nodes serving one namespace).
        self.addrs = [a.strip() for a in addr.split(",") if a.strip()]
        if not self.addrs:
            raise ValueError("no address given")
        self.tls = bool(tls or tls_ca is not None or tls_server_name)
        credentials, metadata = _credentials(token, self.tls, tls_ca)
        #: Keyword arguments of every call: the token's metadata on a plaintext channel.
        self._call_kw: dict[str, Any] = {"metadata": metadata} if metadata else {}
        if tls_server_name:
            options = tuple(options) + (("grpc.ssl_target_name_override", tls_server_name),)
        self.retry = retry or RetryPolicy()
        #: Deadline of each unary call in seconds (streams have none: they may run for hours).
        self.timeout = timeout
        #: `upload` sends objects up to this size in one PutObject call (0: always a session).
        self.small_put_max = SMALL_PUT_MAX
        self._credentials, self._options = credentials, tuple(options)
        self._channels: list[grpc.Channel] = []
        self._stubs: list[oss_pb2_grpc.ObjectStorageStub] = []
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.open_channels(channels)
        self._reached = False  # has any call ever got an answer from a node?
        self._unreached_failures = 0  # transport failures before that
        #: When each address may be tried again after a transport failure (monotonic seconds).
        self._down_until = [0.0] * len(self.addrs)
        self._last = threading.local()  # which channel this thread's last call used

    # -- plumbing -------------------------------------------------------------------------

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def open_channels(self, channels: int) -> None:
        """Have at least `channels` channels per address, opening more if needed (they join
        the round robin). `mini-oss get` calls it once it knows a download is parallel, so a
        small get keeps its one connection."""
        with self._lock:
            have = len(self._channels) // len(self.addrs)
            for i in range(have, channels):
                for target in self.addrs:  # interleaved: consecutive calls go to other nodes
                    opts = list(CHANNEL_OPTIONS) + list(self._options)
                    if channels > 1:
                        # A private subchannel pool and a distinct argument: gRPC would
                        # otherwise let channels to one target share a TCP connection (one
                        # worker).
                        opts += [("grpc.use_local_subchannel_pool", 1),
                                 ("mini_oss.channel_index", i)]
                    if self._credentials is not None:
                        channel = grpc.secure_channel(target, self._credentials, options=opts)
                    else:
                        channel = grpc.insecure_channel(target, options=opts)
                    self._channels.append(channel)
                    self._stubs.append(oss_pb2_grpc.ObjectStorageStub(channel))

    def _stub(self, channel: int | None = None) -> oss_pb2_grpc.ObjectStorageStub:
        """The next channel's stub, round robin, skipping an address that just failed (unless
        every address did). `channel` asks for that one (modulo the count) instead, unless
        its address just failed: a parallel download keeps each stream on its own connection."""
        now = time.monotonic()
        with self._lock:
            i = -1 if channel is None else channel % len(self._stubs)
            if i < 0 or self._down_until[i % len(self.addrs)] > now:
                for _ in range(len(self._stubs)):
                    i = next(self._next) % len(self._stubs)
                    if self._down_until[i % len(self.addrs)] <= now:
                        break
        self._last.index = i
        return self._stubs[i]

    def _error(self, exc: grpc.RpcError) -> OssError:
        err = from_rpc_error(exc)
        if err.reason or (err.code == "UNAVAILABLE" and not _connect_failure(err)):
            # The node answered, or took the call and then died under it (a worker killed
            # mid-call: "Socket closed"): either way the address is right, so retry it.
            self._reached = True
        elif err.code == "UNAVAILABLE":
            with self._lock:
                if not self._reached:
                    self._unreached_failures += 1
                last = getattr(self._last, "index", None)
                if last is not None and len(self.addrs) > 1:
                    # That node is unreachable: the next calls go to the others for a while.
                    self._down_until[last % len(self.addrs)] = time.monotonic() + ADDRESS_PAUSE
        return err

    def _never_reached(self, err: OssError) -> bool:
        """A transport failure, no node ever answered, and every address has failed so."""
        return (err.code == "UNAVAILABLE" and not err.reason and not self._reached
                and self._unreached_failures >= len(self.addrs))

    def _should_retry(self, err: OssError, idempotent: bool) -> bool:
        if self._never_reached(err):
            return False
        if idempotent:
            return err.retryable
        return err.retryable and bool(err.reason)  # the node refused it: it did not run

    def _call(self, fn: Callable[[oss_pb2_grpc.ObjectStorageStub], Any], *, idempotent: bool) -> Any:
        retrier = _Retrier(self.retry)
        while True:
            try:
                result = fn(self._stub())
                self._reached = True
                return result
            except grpc.RpcError as exc:
                err = self._error(exc)
            if not self._should_retry(err, idempotent):
                raise err
            retrier.wait(err)

    def _unary(self, method: str, request: Any, *, idempotent: bool = True) -> Any:
        return self._call(lambda stub: getattr(stub, method)(
            request, timeout=self.timeout, **self._call_kw), idempotent=idempotent)

    # -- unary calls ----------------------------------------------------------------------

    def node_info(self) -> NodeInfo:
        return self._unary("GetNodeInfo", oss_pb2.GetNodeInfoRequest())

    def create_session(self, object_id: str, file_name: str, file_size: int, *,
                       chunk_size: int = 0, sha256: str = "", content_type: str = "",
                       metadata: Mapping[str, str] | None = None, if_absent: bool = False,
                       if_generation_match: str = "", slices: int = 0) -> UploadSession:
        """`slices` > 1 asks for a sliced session (API.md): its `slices` are sessions of their
        own, for several streams at once; the node may make fewer, or none for a small object."""
        request = oss_pb2.CreateUploadSessionRequest(
            object_id=object_id, file_name=file_name, file_size=file_size, chunk_size=chunk_size,
            sha256=sha256 or "", content_type=content_type or "", metadata=dict(metadata or {}),
            if_absent=if_absent, if_generation_match=if_generation_match or "", slices=slices)
        # Retried like a read: a repeat after a lost answer only leaves an empty session
        # behind, which expires; failing a whole upload for that would be worse.
        return self._unary("CreateUploadSession", request)

    def sign_url(self, object_id: str, *, expires: int = 0, generation: str = "") -> str:
        """An absolute URL that downloads `object_id` with no header until it expires
        (`expires` seconds, default an hour, at most 7 days); `generation` pins one version.
        The node signs it (SignDownloadUrl): the key never leaves the node. Its host is the
        one this client reached the node at; https when this client uses TLS."""
        request = oss_pb2.SignDownloadUrlRequest(object_id=object_id, expires_in_seconds=expires,
                                                 generation=generation)
        signed = self._unary("SignDownloadUrl", request)
        if not signed.http_port:
            raise errors.InvalidArgument("the node serves no HTTP (--http-listen is off)")
        addr = self.addrs[getattr(self._last, "index", 0) % len(self.addrs)]
        host = addr.rsplit(":", 1)[0]
        return f"{'https' if self.tls else 'http'}://{host}:{signed.http_port}{signed.path}"

    def get_session(self, upload_id: str) -> UploadSession:
        return self._unary("GetUploadSession", oss_pb2.GetUploadSessionRequest(upload_id=upload_id))

    def abort_session(self, upload_id: str) -> None:
        self._unary("AbortUploadSession", oss_pb2.AbortUploadSessionRequest(upload_id=upload_id))

    def list_sessions(self, prefix: str = "", page_size: int = 0) -> Iterator[UploadSession]:
        return self._pages("ListUploadSessions", "sessions", lambda token: oss_pb2.ListUploadSessionsRequest(
            object_id_prefix=prefix, page_size=page_size, page_token=token))

    def stat(self, object_id: str) -> ObjectInfo:
        return self._unary("StatObject", oss_pb2.StatObjectRequest(object_id=object_id))

    def list_objects(self, prefix: str = "", page_size: int = 0) -> Iterator[ObjectInfo]:
        return self._pages("ListObjects", "objects", lambda token: oss_pb2.ListObjectsRequest(
            prefix=prefix, page_size=page_size, page_token=token))

    def _pages(self, method: str, field: str, request_for) -> Iterator:
        """Every item of a paged listing: ask again with next_page_token until there is none."""
        token = ""
        while True:
            page = self._unary(method, request_for(token))
            yield from getattr(page, field)
            token = page.next_page_token
            if not token:
                return

    def delete(self, object_id: str, if_generation_match: str = "") -> None:
        self._unary("DeleteObject", oss_pb2.DeleteObjectRequest(
            object_id=object_id, if_generation_match=if_generation_match or ""), idempotent=False)

    def put_object(self, object_id: str, data: bytes, *, file_name: str = "",
                   content_type: str = "", metadata: Mapping[str, str] | None = None,
                   sha256: str = "", if_absent: bool = False,
                   if_generation_match: str = "") -> ObjectInfo:
        """Store `data` (at most the node's max_chunk_size) as `object_id` in one call.

        Without a precondition a repeat after a lost answer stores the same bytes again, so it
        is retried like a read; with one, the first attempt's own commit could refuse the
        repeat, so only a refusal that never ran is retried (API.md "One-call put").
        The SHA-256 of `data` always goes along (computed here unless given): the node commits
        nothing but these bytes."""
        request = oss_pb2.PutObjectRequest(
            object_id=object_id, file_name=file_name or object_id, data=data, crc32=crc32(data),
            sha256=sha256 or hashlib.sha256(data).hexdigest(), content_type=content_type or "",
            metadata=dict(metadata or {}), if_absent=if_absent,
            if_generation_match=if_generation_match or "")
        return self._unary("PutObject", request,
                           idempotent=not (if_absent or if_generation_match)).object

    def takes_one_call(self, size: int, *, parallel: int = 1, if_absent: bool = False,
                       if_generation_match: str = "") -> bool:
        """Whether an upload goes by `put_small`: small, on one stream, and with no
        precondition (exactly-once with one needs a session; API.md "One-call put")."""
        return (size <= self.small_put_max and parallel <= 1
                and not (if_absent or if_generation_match))

    def put_small(self, object_id: str, data: bytes, **fields) -> ObjectInfo | None:
        """`put_object`, or None when this node takes no such put (an older node: UNIMPLEMENTED;
        one whose max_chunk_size is below the object: CHUNK_TOO_LARGE), so a session does it."""
        try:
            return self.put_object(object_id, data, **fields)
        except OssError as err:
            if err.code == "UNIMPLEMENTED" or err.reason == "CHUNK_TOO_LARGE":
                return None
            raise

    # -- upload ---------------------------------------------------------------------------

    def upload(self, source: str | os.PathLike | BinaryIO, object_id: str | None = None, *,
               file_name: str | None = None, content_type: str = "",
               metadata: Mapping[str, str] | None = None, if_absent: bool = False,
               if_generation_match: str = "", chunk_size: int = 0, sha256: str | None = None,
               upload_id: str | None = None, size: int | None = None,
               progress: Progress | None = None, parallel: int = 1) -> ObjectInfo:
        """Upload `source` (a path, or a binary file object from its current position).

        `parallel` > 1 uploads over that many streams at once (a sliced session; the source
        must be seekable); a continued `upload_id` that is a sliced session always is.

        With `upload_id`, continue that session instead of creating one (the source must hold
        the whole object again; its first `uploaded_offset` bytes are read only to hash them).
        `size` is needed only for a source that cannot seek. `progress(done, total)` is called
        from this thread; an exception it raises cancels the stream, leaves the session ACTIVE
        (resume with `upload_id=`), and propagates. An `OssError` raised after the session was
        made carries `metadata["upload_id"]`.
        """
        with _open_source(source) as (fileobj, source_name):
            if size is None:
                size = _remaining_size(fileobj)
            if upload_id:
                session = self.get_session(upload_id)
                if object_id and object_id != session.object_id:
                    raise ValueError(f"upload {upload_id} is for object {session.object_id!r}, "
                                     f"not {object_id!r}")
                if session.file_size != size:
                    raise ValueError(f"upload {upload_id} expects {session.file_size} bytes, "
                                     f"the source has {size}")
            else:
                if not object_id:
                    raise ValueError("object_id is required (or upload_id to continue)")
                if self.takes_one_call(size, parallel=parallel, if_absent=if_absent,
                                       if_generation_match=if_generation_match):
                    data = UploadReader(fileobj, size, hash=False).read(size)
                    info = self.put_small(object_id, data,
                                          file_name=file_name or source_name or object_id,
                                          content_type=content_type, metadata=metadata,
                                          sha256=sha256 or "")
                    if info is not None:
                        if progress is not None:
                            progress(size, size)
                        return info
                    fileobj = io.BytesIO(data)  # the session below sends what was read
                session = self.create_session(
                    object_id, file_name or source_name or object_id, size,
                    chunk_size=chunk_size, sha256=sha256 or "", content_type=content_type,
                    metadata=metadata, if_absent=if_absent,
                    if_generation_match=if_generation_match,
                    slices=parallel if parallel > 1 else 0)
            try:
                if session.slices:
                    from node.transfers.parallel_upload import upload_sliced
                    return upload_sliced(self, session, fileobj, size, sha256 or "", progress)
                return self._upload_session(session, fileobj, size, sha256 or "", progress)
            except OssError as err:
                err.metadata.setdefault("upload_id", session.upload_id)
                raise

    def _upload_session(self, session: UploadSession, fileobj: IO[bytes], size: int,
                        sha256: str, progress: Progress | None) -> ObjectInfo | None:
        """Send a session's bytes from its `uploaded_offset` until it commits; returns the
        object. A slice of a sliced session commits nothing: it returns None once all its
        bytes are durable (or the object, if its sliced session has committed meanwhile)."""
        upload_id = session.upload_id
        is_slice = bool(session.parent_upload_id)
        if session.state == COMMITTED:
            return self._committed_object(upload_id)
        if session.state != ACTIVE:
            raise errors.SessionNotFound(f"upload session {upload_id} is "
                                         f"{UploadSession.State.Name(session.state)}")
        if is_slice and session.uploaded_offset >= size:
            return None
        reader = UploadReader(fileobj, size, hash=not (sha256 or session.sha256 or is_slice))
        chunk_size = session.chunk_size if session.chunk_size > 0 else 1 * MiB
        retrier = _Retrier(self.retry)
        offset = best = session.uploaded_offset
        while True:
            if progress:
                progress(offset, size)
            try:
                response = self._upload_stream(upload_id, reader, offset, chunk_size, sha256,
                                               progress)
                self._reached = True
                if response.HasField("object"):
                    if progress:
                        progress(size, size)
                    return response.object
                if is_slice and response.session.uploaded_offset >= size:
                    if progress:
                        progress(size, size)
                    return None
                err: OssError = TransportError(
                    "UNAVAILABLE", f"the upload stream ended at byte "
                    f"{response.session.uploaded_offset} of {size} without committing")
            except OssError as exc:
                if not resumable(exc) or self._never_reached(exc):
                    raise
                err = exc
            retrier.wait(err)
            session = self.get_session(upload_id)
            if session.state == COMMITTED:
                return self._committed_object(upload_id)
            if session.state != ACTIVE:
                raise errors.SessionNotFound(
                    f"upload session {upload_id} is {UploadSession.State.Name(session.state)} "
                    f"after: {err.message}")
            if session.uploaded_offset > best:
                best = session.uploaded_offset
                retrier.progressed()
            offset = session.uploaded_offset
            if is_slice and offset >= size:
                return None

    def _upload_stream(self, upload_id: str, reader: UploadReader, start: int, chunk_size: int,
                       sha256: str, progress: Progress | None) -> oss_pb2.UploadResponse:
        """One Upload stream from `start` to the end; raises OssError or what the source raised."""
        size = reader.size
        stop = threading.Event()
        failure: list[BaseException] = []
        sent = [start]

        def requests() -> Iterator[oss_pb2.UploadChunk]:
            offset, first = start, True
            while True:
                with reader.lock:
                    if stop.is_set():
                        return
                    try:
                        data = reader.read(chunk_size)
                        message = oss_pb2.UploadChunk(offset=offset, data=data,
                                                      crc32=crc32(data))
                        if first:
                            message.upload_id = upload_id
                            if sha256:
                                message.sha256 = sha256
                        last = offset + len(data) >= size
                        if last and reader.hashing:
                            message.sha256 = reader.hexdigest()
                    except BaseException as exc:  # ends the stream cleanly; raised below
                        failure.append(exc)
                        return
                yield message
                offset += len(data)
                sent[0] = offset
                first = False
                if last:
                    return

        with reader.lock:  # here, not in the stream: hashing a long prefix takes a while
            reader.seek(start)
        call = self._stub().Upload.future(requests(), **self._call_kw)
        reported = -1
        try:
            while True:
                try:
                    response = call.result(timeout=_POLL_SECONDS)
                    break
                except grpc.FutureTimeoutError:
                    if progress and sent[0] != reported:
                        reported = sent[0]
                        progress(reported, size)
        except grpc.RpcError as exc:
            if failure:
                raise failure[0] from None
            raise self._error(exc) from None
        except BaseException:
            call.cancel()
            raise
        finally:
            stop.set()
            with reader.lock:  # the old stream's generator is not inside a read any more
                pass
        if failure:
            raise failure[0]
        return response

    def _committed_object(self, upload_id: str) -> ObjectInfo:
        """The object a COMMITTED session wrote (Upload on it returns it: API.md)."""
        response = self._call(lambda stub: stub.Upload(
            iter([oss_pb2.UploadChunk(upload_id=upload_id)]), timeout=self.timeout,
            **self._call_kw),
            idempotent=True)
        return response.object

    # -- download -------------------------------------------------------------------------

    def iter_download(self, object_id: str, *, start: int = 0, end: int | None = None,
                      chunk_size: int = 0, if_generation_match: str = "", verify: bool = True,
                      progress: Progress | None = None,
                      channel: int | None = None) -> "DownloadStream":
        """(offset, bytes) pairs of the range, in order, verified; see `DownloadStream`.
        `channel`: which of the client's connections carries it (default: round robin)."""
        return DownloadStream(self, object_id, start=start, end=end, chunk_size=chunk_size,
                              if_generation_match=if_generation_match, verify=verify,
                              progress=progress, channel=channel)

    def download(self, object_id: str, dest: str | os.PathLike | BinaryIO, *, start: int = 0,
                 end: int | None = None, chunk_size: int = 0, verify: bool = True,
                 if_generation_match: str = "", progress: Progress | None = None,
                 overwrite: bool = True, parallel: int = 1) -> ObjectInfo:
        """Write the range [start, end) of the object to `dest` (a path or a binary file).

        To a path: through a temporary file in the same directory, renamed into place once
        complete and verified; a failed download leaves nothing at the path. With
        `overwrite=False` an existing file (or symlink) at the path is never replaced: the
        finished file is hard-linked into place, which fails with FileExistsError if the path
        exists by then.

        `parallel=N` fetches a whole object to a path over up to N streams at once, one byte
        range each, all pinned to one generation (`node.transfers.parallel_download`); stream i uses
        channel i, so `Client(addr, channels=N)` spreads them over the node's workers. The
        file's SHA-256 is checked by reading it back once complete. A range, or a file object
        as `dest`, is fetched on one stream.
        """
        if parallel < 1:
            raise ValueError("parallel must be >= 1")

        def fill(f: BinaryIO) -> ObjectInfo:
            stream = self.iter_download(object_id, start=start, end=end, chunk_size=chunk_size,
                                        if_generation_match=if_generation_match, verify=verify,
                                        progress=progress)
            for _, data in stream:
                f.write(data)
            assert stream.info is not None
            return stream.info

        if not isinstance(dest, (str, bytes, os.PathLike)):
            return fill(dest)
        if parallel > 1 and (start, end) == (0, None):
            from node.transfers import parallel_download

            return _write_path(dest, overwrite, lambda f: parallel_download.download(
                self, object_id, f.fileno(), streams=parallel, chunk_size=chunk_size,
                verify=verify, if_generation_match=if_generation_match, progress=progress))
        return _write_path(dest, overwrite, fill)


def _write_path(dest: str | bytes | os.PathLike, overwrite: bool,
                fill: Callable[[BinaryIO], ObjectInfo]) -> ObjectInfo:
    """Run `fill` on a new temporary file next to `dest`, then sync it and move it into place
    (see `Client.download`); on any failure the temporary file is removed."""
    path = os.fsdecode(dest)
    directory = os.path.dirname(os.path.abspath(path))
    # The temporary name stays well inside the 255-byte limit whatever the final name is
    # (40 characters are at most 160 bytes of UTF-8).
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path)[:40] + ".",
                               suffix=".download")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            info = fill(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            _place_new(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return info


def _place_new(tmp: str, path: str) -> None:
    """Move the finished file `tmp` to `path` only if nothing is there: link, then unlink (a
    file system without hard links gets a check and a rename instead)."""
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:  # EPERM, ENOTSUP, EMLINK...: no hard links here
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


class DownloadStream:
    """Iterates (offset, bytes) of one download, resuming cut streams, verifying everything.

    `info` (the ObjectInfo), `start` and `end` (the resolved absolute range) are set once the
    first message has arrived. A whole-object download with `verify` raises `Sha256Mismatch`
    at the end if the bytes do not hash to `info.sha256`; a bad chunk CRC or an out-of-order
    offset raises `ChecksumMismatch` at once. `cancel()`, from any thread, ends it: the
    iterating thread gets a CANCELLED `TransportError` and nothing is re-issued.
    """

    def __init__(self, client: Client, object_id: str, *, start: int, end: int | None,
                 chunk_size: int, if_generation_match: str, verify: bool,
                 progress: Progress | None, channel: int | None = None) -> None:
        self._client = client
        self._channel = channel
        self._cancelled = threading.Event()
        self._call_lock = threading.Lock()  # a call is never opened after cancel() looked
        self._call: Any = None
        self.object_id = object_id
        self._req_start, self._req_end = start, end
        self._chunk_size = chunk_size
        self._generation = if_generation_match
        self._verify = verify
        self._progress = progress
        self.info: ObjectInfo | None = None
        self.start: int | None = None
        self.end: int | None = None
        self._iter = self._run()

    def __iter__(self) -> "DownloadStream":
        return self

    def __next__(self) -> tuple[int, bytes]:
        return next(self._iter)

    def close(self) -> None:
        self._iter.close()

    def cancel(self) -> None:
        """Stop the stream from another thread (see the class)."""
        with self._call_lock:
            self._cancelled.set()
            if self._call is not None:
                self._call.cancel()

    def _open(self, request: oss_pb2.DownloadRequest) -> Any:
        client = self._client
        with self._call_lock:
            if self._cancelled.is_set():
                raise TransportError("CANCELLED", f"the download of {self.object_id!r} was "
                                                  f"cancelled")
            self._call = client._stub(self._channel).Download(request, **client._call_kw)
            return self._call

    def _first(self, info: ObjectInfo) -> None:
        self.info = info
        size = info.size
        start = self._req_start if self._req_start >= 0 else max(0, size + self._req_start)
        end = size if self._req_end is None else min(self._req_end, size)
        self.start, self.end = start, end
        if not self._generation:
            self._generation = info.generation

    def _request(self, next_offset: int | None) -> oss_pb2.DownloadRequest:
        if next_offset is None:  # nothing received yet: the caller's own range
            request = oss_pb2.DownloadRequest(object_id=self.object_id,
                                              start_offset=self._req_start,
                                              chunk_size=self._chunk_size,
                                              if_generation_match=self._generation)
            if self._req_end is not None:
                request.end_offset = self._req_end
            return request
        return oss_pb2.DownloadRequest(object_id=self.object_id, start_offset=next_offset,
                                       end_offset=self.end, chunk_size=self._chunk_size,
                                       if_generation_match=self._generation)

    def _run(self) -> Iterator[tuple[int, bytes]]:
        client = self._client
        # Backoff waits on the cancel flag: a cancelled stream does not sleep out its backoff.
        retrier = _Retrier(client.retry, sleep=self._cancelled.wait)
        hasher = None
        next_offset: int | None = None
        while True:
            call = self._open(self._request(next_offset))
            try:
                for message in call:
                    client._reached = True
                    if self.info is None:
                        if not message.HasField("object"):
                            raise errors.ChecksumMismatch(
                                "the first download message carries no ObjectInfo")
                        self._first(message.object)
                        next_offset = self.start
                        if self._verify and self.start == 0 and self.end == message.object.size:
                            hasher = hashlib.sha256()
                        if self._progress:
                            self._progress(0, max(0, self.end - self.start))
                    elif message.HasField("object") and \
                            message.object.generation != self.info.generation:
                        raise errors.GenerationMismatch(
                            f"object {self.object_id!r} changed during the download")
                    data = message.data  # (each access of a bytes field makes a new object)
                    if not data:
                        continue
                    if message.offset != next_offset:
                        raise errors.ChecksumMismatch(
                            f"download chunk at byte {message.offset}, expected {next_offset}",
                            offset=message.offset)
                    if crc32(data) != message.crc32:
                        raise errors.ChecksumMismatch(
                            f"download chunk at byte {message.offset} fails its CRC-32",
                            offset=message.offset)
                    if next_offset + len(data) > self.end:
                        raise errors.ChecksumMismatch(
                            f"download chunk at byte {message.offset} runs past {self.end}")
                    if hasher is not None:
                        hasher.update(data)
                    next_offset += len(data)
                    retrier.progressed()
                    yield message.offset, data
                    if self._progress:
                        self._progress(next_offset - self.start, self.end - self.start)
                if self.info is not None and next_offset == self.end:
                    break
                err: OssError = TransportError(
                    "UNAVAILABLE", f"the download stream ended at byte {next_offset}")
            except grpc.RpcError as exc:
                err = client._error(exc)
                if not resumable(err) or client._never_reached(err):
                    raise err from None
            finally:
                call.cancel()
            retrier.wait(err)
        if hasher is not None:
            got = hasher.hexdigest()
            expected = self.info.sha256.lower()
            if expected and got != expected:
                raise errors.Sha256Mismatch(
                    f"object {self.object_id!r} hashes to {got}, its ObjectInfo says {expected}",
                    expected=expected, got=got)
