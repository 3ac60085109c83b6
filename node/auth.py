"""Bearer-token authentication and authorisation: the token file and a server interceptor.

Why: a node that anyone on the network can write to is only fit for a laptop. With
`--auth-token-file` every call to `oss.v1.ObjectStorage` must carry `authorization: Bearer
<token>` metadata naming a token from that file; the token's role and object-id prefix decide
what it may do. The health and reflection services stay open, so load balancers' probes and
`grpcurl describe` work without a token.

The token file
--------------
One entry per line, fields separated by white space::

    # TOKEN                             ROLE   [PREFIX]
    3f9c1b0e5d7a4c2e8b6f0a1d9e3c5b7a    admin
    c0ffee00c0ffee00c0ffee00c0ffee00    read
    b1e2d3c4b1e2d3c4b1e2d3c4b1e2d3c4    write  team-a-

* `#` starts a comment (anywhere: a token never contains `#`); blank lines are ignored.
* TOKEN: 16 to 1024 characters of the RFC 6750 token alphabet (`A-Z a-z 0-9 - . _ ~ + /`, then
  optional trailing `=`), so it always fits an HTTP/2 header. Each token appears once.
* ROLE: `read` < `write` < `admin`; a higher role may do everything a lower one may.
  read: Download, StatObject, ListObjects, GetNodeInfo, GetUploadSession, ListUploadSessions.
  write: also CreateUploadSession, Upload, AbortUploadSession, DeleteObject, PutObject.
  admin: also any method not listed above (fail closed: a method added to the service later is
  admin-only until it is given a role here).
* PREFIX (optional): the token only reaches object ids that start with it. A request that
  names an object (CreateUploadSession, PutObject, Download, StatObject, DeleteObject) must
  name one inside the prefix; a listing (ListObjects.prefix, ListUploadSessions.object_id_prefix)
  must ask for a prefix that itself starts with it. Anything else is PERMISSION_DENIED/FORBIDDEN.
* Calls keyed by an upload session (GetUploadSession, AbortUploadSession, Upload) carry no
  object id, so an upload_id alone must open nothing: the interceptor puts the token's prefix
  in `node.scope`, and the node checks it against the session's own object id once it has
  looked the session up (FORBIDDEN otherwise). An upload_id is still worth keeping to oneself:
  any token whose prefix covers the session may use it.

The file is parsed strictly, once, when a worker starts: any bad line stops the node with a
reason naming the file and the line number, and never any field of the line (a token may
stand where a role was expected). Change the file, then restart the node.

Secrets
-------
Only SHA-256 digests of the tokens are kept in memory; a presented token is hashed and looked
up by digest, so no comparison ever runs over the secret itself (and the time a lookup takes
says nothing useful about a token: finding one from its digest is a preimage attack). Nothing
here logs or echoes a token; a log line names a token only by `fingerprint()`, the first 8 hex
characters of its SHA-256.

Refusals are answered inside the call, through `node.status.to_status`, so they carry the
`ErrorInfo` the contract promises. A refused request is never decoded: the refusing handler
takes the raw bytes. A call that is refused is still charged to the caller's request rate
(when rate limits are on), so guessing tokens is as slow as any other call.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import logging
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import grpc

from node.errors import Forbidden, InvalidToken, MissingToken, OssError
from node.pb import oss_pb2
from node.scope import TOKEN_PREFIX
from node.service import client_of
from node.status import to_status

log = logging.getLogger("mini_oss.auth")

SERVICE = oss_pb2.DESCRIPTOR.services_by_name["ObjectStorage"].full_name
#: Services that never need a token (prefixes of the method path).
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")

MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 1024
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,128}")
_BEARER = re.compile(r"bearer[ \t]+(\S*)[ \t]*", re.IGNORECASE)


class Role(enum.IntEnum):
    READ = 1
    WRITE = 2
    ADMIN = 3

    def __str__(self) -> str:
        return self.name.lower()


ROLES = {str(role): role for role in Role}

#: The role each method needs; a method missing here needs ADMIN.
METHOD_ROLES: dict[str, Role] = {
    "Download": Role.READ, "StatObject": Role.READ, "ListObjects": Role.READ,
    "GetNodeInfo": Role.READ, "GetUploadSession": Role.READ, "ListUploadSessions": Role.READ,
    "SignDownloadUrl": Role.READ,
    "CreateUploadSession": Role.WRITE, "Upload": Role.WRITE, "AbortUploadSession": Role.WRITE,
    "DeleteObject": Role.WRITE, "PutObject": Role.WRITE,
}
#: The request field a prefix-limited token is checked against, per method. Object ids and
#: listing prefixes are checked the same way: the value must start with the token's prefix.
PREFIX_FIELDS: dict[str, str] = {
    "CreateUploadSession": "object_id", "Download": "object_id", "StatObject": "object_id",
    "DeleteObject": "object_id", "ListObjects": "prefix", "ListUploadSessions": "object_id_prefix",
    "SignDownloadUrl": "object_id", "PutObject": "object_id",
}


#: Methods keyed by an upload_id: the session's own object id is checked against the prefix
#: once the node has looked the session up (node.scope).
SESSION_METHODS = ("GetUploadSession", "AbortUploadSession", "Upload")


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the file and line, never a token."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What one token may do."""

    role: Role
    prefix: str = ""
    #: `fingerprint()` of the token: the only way a log line may name it.
    fingerprint: str = ""
    line: int = 0

    def allows(self, role: Role) -> bool:
        return self.role >= role

    def covers(self, value: str) -> bool:
        return value.startswith(self.prefix)


def digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode("utf-8") if isinstance(token, str) else token).digest()


def fingerprint(token: str | bytes) -> str:
    """A short, non-reversible name for a token in logs: 8 hex characters of its SHA-256."""
    return digest(token).hex()[:8]


class TokenTable:
    """SHA-256 digest of a token -> its Grant. Holds no token."""

    def __init__(self, grants: Mapping[bytes, Grant]) -> None:
        self._grants = dict(grants)

    def __len__(self) -> int:
        return len(self._grants)

    def lookup(self, token: str) -> Grant | None:
        return self._grants.get(digest(token))

    def summary(self) -> str:
        counts = {str(r): 0 for r in Role}
        limited = 0
        for grant in self._grants.values():
            counts[str(grant.role)] += 1
            limited += bool(grant.prefix)
        return ", ".join(f"{n} {r}" for r, n in counts.items()) + f"; {limited} prefix-limited"


def parse_tokens(text: str, source: str = "token file") -> TokenTable:
    """Parse the token file format (see the module doc); raise TokenFileError on any bad line."""
    grants: dict[bytes, Grant] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        fields = line.split()
        if len(fields) < 2:
            raise TokenFileError(f"{where}: expected TOKEN ROLE [PREFIX], found one field")
        if len(fields) > 3:
            raise TokenFileError(f"{where}: expected TOKEN ROLE [PREFIX], found {len(fields)} fields")
        token, role_name = fields[0], fields[1]
        if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
            raise TokenFileError(f"{where}: the token must be {MIN_TOKEN_CHARS} to "
                                 f"{MAX_TOKEN_CHARS} characters long")
        if not _TOKEN.fullmatch(token):
            raise TokenFileError(f"{where}: the token may only use A-Z a-z 0-9 - . _ ~ + / "
                                 "(and '=' at the end)")
        role = ROLES.get(role_name)
        if role is None:
            raise TokenFileError(f"{where}: the role must be read, write or admin")
        prefix = ""
        if len(fields) == 3:
            prefix = fields[2]
            if not _PREFIX.fullmatch(prefix):
                raise TokenFileError(f"{where}: the prefix must be 1 to 128 characters of "
                                     "A-Z a-z 0-9 . _ -")
        key = digest(token)
        if key in grants:
            raise TokenFileError(f"{where}: the same token is already on line {grants[key].line}")
        grants[key] = Grant(role, prefix, fingerprint(token), number)
    if not grants:
        raise TokenFileError(f"{source}: no tokens (every call would be refused)")
    return TokenTable(grants)


def load_token_file(path: str) -> TokenTable:
    """Read and parse the token file; every failure is a TokenFileError naming the file."""
    try:
        # O_NONBLOCK: a FIFO in its place must not hang the boot (no effect on a file).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise TokenFileError(f"token file {path!r} is not a regular file")
        except BaseException:
            os.close(fd)
            raise
        with open(fd, "rb") as f:
            data = f.read(16 * 1024 * 1024 + 1)
    except OSError as exc:
        raise TokenFileError(f"cannot read token file {path!r}: {exc.strerror or exc}") from None
    if len(data) > 16 * 1024 * 1024:
        raise TokenFileError(f"token file {path!r} is larger than 16 MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenFileError(f"token file {path!r} is not UTF-8 (byte {exc.start})") from None
    table = parse_tokens(text, f"token file {path!r}")
    if info.st_mode & 0o077:
        log.warning("token file %r is readable or writable by other users (mode %o): "
                    "chmod 600 it", path, stat.S_IMODE(info.st_mode))
    return table


def bearer_token(metadata: Any) -> str:
    """The token of the call's `authorization` metadata; MissingToken or InvalidToken."""
    values = [value for key, value in (metadata or ()) if key == "authorization"]
    if not values:
        raise MissingToken("this node requires a token: send 'authorization: Bearer <token>'")
    if len(values) > 1:
        raise InvalidToken("more than one authorization header")
    value = values[0]
    if isinstance(value, bytes):
        raise InvalidToken("the authorization header is not text")
    match = _BEARER.fullmatch(value)
    if match is None:
        raise InvalidToken("the authorization header must be 'Bearer <token>'")
    if not match.group(1):
        raise MissingToken("the authorization header carries no token")
    return match.group(1)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every `oss.v1.ObjectStorage` call against the token table.

    `limiter` (optional) is charged for refused calls, which never reach the servicer's own
    rate check; `on_error(code)` counts refusals in the metrics.
    """

    def __init__(self, table: TokenTable, *, limiter: Any = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.table = table
        self.limiter = limiter
        self.on_error = on_error or (lambda code: None)

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                             Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        path = details.method or ""
        if path.startswith(OPEN_SERVICES):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED
            return None
        known = path.startswith(f"/{SERVICE}/")
        method = path.rsplit("/", 1)[-1]
        # Fail closed: a method with no role here needs admin, and an unlimited token.
        needed = METHOD_ROLES.get(method, Role.ADMIN) if known else Role.ADMIN
        token = ""
        try:
            token = bearer_token(details.invocation_metadata)
            grant = self.table.lookup(token)
            if grant is None:
                raise InvalidToken("the token is not known to this node")
            if not grant.allows(needed):
                raise Forbidden(f"{method} needs a {needed} token; this one is {grant.role}",
                                required_role=str(needed))
            if grant.prefix and not (known and method in METHOD_ROLES):
                raise Forbidden(f"{method} needs a token without a prefix limit")
        except OssError as err:
            return self._refuse(handler, err, method, fingerprint(token) if token else "")
        if grant.prefix and method in SESSION_METHODS:
            return self._with_scope(handler, grant)
        field = PREFIX_FIELDS.get(method) if grant.prefix else None
        if field is None:
            return handler
        return self._with_prefix_check(handler, method, field, grant)

    # -- refusing ---------------------------------------------------------------------------

    def _refuse(self, handler: grpc.RpcMethodHandler, err: OssError, method: str,
                token_id: str) -> grpc.RpcMethodHandler:
        async def abort(context: grpc.aio.ServicerContext) -> None:
            client = client_of(context)
            final = err
            if self.limiter is not None:
                try:
                    self.limiter.admit(client)
                except OssError as limited:
                    final = limited
            log.debug("refused %s from %s: %s %s (token %s)", method, client, final.code,
                      final.reason, f"sha256:{token_id}" if token_id else "none")
            if method == "Upload":
                # The contract: every failed Upload names a resume point; a caller that may not
                # see the session learns none (0).
                final.with_metadata(uploaded_offset=0)
            self.on_error(final.code)
            await context.abort_with_status(to_status(final))

        async def unary(request, context):
            await abort(context)

        async def streaming(request_iterator, context):
            await abort(context)

        # No request_deserializer: a refused call's bytes are never decoded.
        serializer = handler.response_serializer
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(streaming, response_serializer=serializer)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(streaming, response_serializer=serializer)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(unary, response_serializer=serializer)
        return grpc.unary_unary_rpc_method_handler(unary, response_serializer=serializer)

    # -- prefix-limited tokens ---------------------------------------------------------------

    @staticmethod
    def _with_scope(handler: grpc.RpcMethodHandler, grant: Grant) -> grpc.RpcMethodHandler:
        """The same handler, run with the token's prefix in `node.scope.TOKEN_PREFIX`."""
        if handler.request_streaming:
            behaviour = handler.stream_unary
            make = grpc.stream_unary_rpc_method_handler
        else:
            behaviour = handler.unary_unary
            make = grpc.unary_unary_rpc_method_handler

        async def scoped(request_or_iterator, context):
            TOKEN_PREFIX.set(grant.prefix)  # this call's task only
            return await behaviour(request_or_iterator, context)
        return make(scoped, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    def _with_prefix_check(self, handler: grpc.RpcMethodHandler, method: str, field: str,
                           grant: Grant) -> grpc.RpcMethodHandler:
        """The same handler (same decoders), with the prefix check before the behaviour.

        Only unary-request methods have a prefix field. A request that did not decode
        (`node.wire.Malformed`) has no field to check: it goes on to the servicer, which
        answers INVALID_ARGUMENT.
        """
        assert not handler.request_streaming
        on_error = self.on_error

        async def check(request, context) -> None:
            value = getattr(request, field, None)
            if isinstance(value, str) and not grant.covers(value):
                what = "object ids" if field == "object_id" else "listings of prefixes"
                err = Forbidden(f"this token is limited to {what} starting with "
                                f"{grant.prefix!r}", prefix=grant.prefix)
                log.debug("refused %s: %s outside the prefix of token sha256:%s", method,
                          field, grant.fingerprint)
                on_error(err.code)
                await context.abort_with_status(to_status(err))

        streaming = handler.response_streaming
        behaviour = handler.unary_stream if streaming else handler.unary_unary
        if inspect.isasyncgenfunction(behaviour):
            async def checked(request, context):
                await check(request, context)
                async for response in behaviour(request, context):
                    yield response
        else:
            async def checked(request, context):
                await check(request, context)
                return await behaviour(request, context)
        make = grpc.unary_stream_rpc_method_handler if streaming else grpc.unary_unary_rpc_method_handler
        return make(checked, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
