"""Every error the node can answer with, typed once.

Each class carries the gRPC status code (by name, so this module imports no gRPC) and the
`ErrorInfo.reason` that API.md fixes for it. Code anywhere in the node raises these; the one
place that turns them into wire errors is `node.status`. The client library maps a received
status back to the same classes, so callers catch `SessionBusy`, not a string.

Anything that is not an `OssError` and escapes a handler is a bug: it is logged and answered
with INTERNAL.
"""

from __future__ import annotations

DOMAIN = "oss.v1"


class OssError(Exception):
    """Base of all contract errors: a status code, a reason, and string metadata."""

    code: str = "INTERNAL"
    reason: str = "INTERNAL"
    #: Seconds the client should wait before retrying, sent as google.rpc.RetryInfo.
    retry_delay: float | None = None

    def __init__(self, message: str = "", /, **metadata: object) -> None:
        super().__init__(message or self.reason)
        self.message = message or self.reason
        self.metadata: dict[str, str] = {k: str(v) for k, v in metadata.items()}

    def with_metadata(self, **metadata: object) -> "OssError":
        self.metadata.update({k: str(v) for k, v in metadata.items()})
        return self

    @property
    def retryable(self) -> bool:
        """The retry contract of API.md: which failures a client may try again."""
        if self.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"):
            return True
        return self.code == "RESOURCE_EXHAUSTED" and self.retry_delay is not None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.metadata!r})"


# INVALID_ARGUMENT
class InvalidArgument(OssError):
    code, reason = "INVALID_ARGUMENT", "INVALID_ARGUMENT"


class InvalidName(OssError):
    code, reason = "INVALID_ARGUMENT", "INVALID_NAME"


class ChunkTooLarge(OssError):
    code, reason = "INVALID_ARGUMENT", "CHUNK_TOO_LARGE"


class InvalidPageToken(OssError):
    code, reason = "INVALID_ARGUMENT", "INVALID_PAGE_TOKEN"


# NOT_FOUND
class SessionNotFound(OssError):
    code, reason = "NOT_FOUND", "SESSION_NOT_FOUND"


class ObjectNotFound(OssError):
    code, reason = "NOT_FOUND", "OBJECT_NOT_FOUND"


# ALREADY_EXISTS
class ObjectExists(OssError):
    code, reason = "ALREADY_EXISTS", "OBJECT_EXISTS"


# FAILED_PRECONDITION
class OffsetMismatch(OssError):
    code, reason = "FAILED_PRECONDITION", "OFFSET_MISMATCH"


class GenerationMismatch(OssError):
    code, reason = "FAILED_PRECONDITION", "GENERATION_MISMATCH"


class SessionCommitted(OssError):
    code, reason = "FAILED_PRECONDITION", "SESSION_COMMITTED"


class SlicesIncomplete(OssError):
    """A sliced session was asked to commit before every slice holds all its bytes."""
    code, reason = "FAILED_PRECONDITION", "SLICES_INCOMPLETE"


# OUT_OF_RANGE
class PastEnd(OssError):
    code, reason = "OUT_OF_RANGE", "PAST_END"


class InvalidRange(OssError):
    code, reason = "OUT_OF_RANGE", "INVALID_RANGE"


# DATA_LOSS
class ChecksumMismatch(OssError):
    code, reason = "DATA_LOSS", "CHECKSUM_MISMATCH"


class Sha256Mismatch(OssError):
    code, reason = "DATA_LOSS", "SHA256_MISMATCH"


# ABORTED
class SessionBusy(OssError):
    code, reason = "ABORTED", "SESSION_BUSY"


class IdleTimeout(OssError):
    code, reason = "ABORTED", "IDLE_TIMEOUT"


# RESOURCE_EXHAUSTED
class TooLarge(OssError):
    code, reason = "RESOURCE_EXHAUSTED", "TOO_LARGE"


class DiskFull(OssError):
    code, reason = "RESOURCE_EXHAUSTED", "DISK_FULL"


class TooManySessions(OssError):
    code, reason = "RESOURCE_EXHAUSTED", "TOO_MANY_SESSIONS"
    retry_delay = 1.0


class RateLimited(OssError):
    code, reason = "RESOURCE_EXHAUSTED", "RATE_LIMITED"
    retry_delay = 1.0


class TooManyStreams(OssError):
    """A client has as many Upload and Download streams open on one worker as it may."""
    code, reason = "RESOURCE_EXHAUSTED", "TOO_MANY_STREAMS"
    retry_delay = 1.0


class TooManyOpenFiles(OssError):
    """The worker is out of file descriptors (EMFILE/ENFILE): a load peak, not the caller's fault."""
    code, reason = "RESOURCE_EXHAUSTED", "TOO_MANY_OPEN_FILES"
    retry_delay = 1.0


# UNAUTHENTICATED / PERMISSION_DENIED
class MissingToken(OssError):
    code, reason = "UNAUTHENTICATED", "MISSING_TOKEN"


class InvalidToken(OssError):
    code, reason = "UNAUTHENTICATED", "INVALID_TOKEN"


class Forbidden(OssError):
    code, reason = "PERMISSION_DENIED", "FORBIDDEN"


# UNAVAILABLE
class Draining(OssError):
    code, reason = "UNAVAILABLE", "DRAINING"


class CatalogUnavailable(OssError):
    """The catalog's database cannot be reached (PostgreSQL down or restarting): try again.

    `maybe_done` (node-side only, never on the wire): the failure came after a write
    transaction had begun, so it may have committed; before that, nothing was written."""
    code, reason = "UNAVAILABLE", "CATALOG_UNAVAILABLE"
    maybe_done = False


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


#: reason -> class, used by the client to rebuild typed errors from the wire.
BY_REASON: dict[str, type[OssError]] = {c.reason: c for c in _all_subclasses(OssError)}


class TransportError(OssError):
    """A failure that carries no ErrorInfo: raised by gRPC itself, not by the service.

    Its `code` is whatever status gRPC reported (UNAVAILABLE for a lost connection, CANCELLED,
    RESOURCE_EXHAUSTED for a message over the limit, ...); its reason is empty.
    """

    reason = ""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(message or code)
        self.code = code


def from_wire(code: str, reason: str, message: str, metadata: dict[str, str],
              retry_delay: float | None = None) -> OssError:
    """Rebuild the typed error a status carried (the client side of `node.status`)."""
    cls = BY_REASON.get(reason)
    if cls is None or cls.code != code:
        err: OssError = TransportError(code, message)
    else:
        err = cls(message, **metadata)
    err.metadata.update(metadata)
    # What the wire said wins over the class default: no RetryInfo, no retry.
    err.retry_delay = retry_delay
    return err
