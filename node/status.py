"""The one place contract errors cross the wire, in both directions.

Server side: `to_status(err)` builds the `grpc.Status` (with a `google.rpc.Status` carrying an
`ErrorInfo`, and a `RetryInfo` when the error says how long to wait) that grpc.aio's
`context.abort_with_status` sends. Client side: `from_rpc_error(e)` rebuilds the typed
`OssError` from what arrived, or a `TransportError` when gRPC itself failed the call.
"""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from node.errors import DOMAIN, OssError, TransportError, from_wire


def to_status(err: OssError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata)
    details = [info]
    if err.retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(_timedelta(err.retry_delay))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=getattr(code_pb2, err.code), message=err.message)
    for detail in details:
        status.details.add().Pack(detail)
    return rpc_status.to_status(status)


def _timedelta(seconds: float):
    import datetime

    return datetime.timedelta(seconds=seconds)


def from_rpc_error(exc: grpc.RpcError) -> OssError:
    """The typed error behind a failed call (works for sync and aio errors)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    code_name = code.name if code is not None else "UNKNOWN"
    message = exc.details() if hasattr(exc, "details") else str(exc)
    try:
        status = rpc_status.from_call(exc)
    except Exception:  # a malformed status detail: treat as a plain transport error
        status = None
    if status is None:
        return TransportError(code_name, message or "")
    reason, metadata, retry_delay = "", {}, None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == DOMAIN:
                reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
    return from_wire(code_name, reason, status.message, metadata, retry_delay)
