"""Every unary-request call is answered, even one whose request stream carries no message.

Why: grpc.aio's server reads the request of a unary-request method (unary-unary and
unary-stream) itself, and when the client half-closes without sending a message it just
returns (grpc's cython `_handle_unary_unary_rpc`: `request_raw is None` -> return): no status
is ever sent, the client waits forever, and the call's state stays in the worker (20,000 such
calls took a worker from 46 to 418 MiB). A client that opens a call and sends nothing at all
holds it just as long.

How: `OneMessageInterceptor`, the FIRST interceptor of the server (grpc.aio runs interceptors
in list order, each one's continuation calling the next, so the first sees the handler every
later one returned: the auth interceptor's wrappers included), turns each unary-request
handler into the stream-request handler of the same method: it keeps the handler's request
deserializer and response serializer, reads exactly one message itself with `context.read()`
(within `stream_idle_timeout`), answers the empty stream with INVALID_ARGUMENT and the silent
one with ABORTED/IDLE_TIMEOUT (both with ErrorInfo, via `node.status`), and then runs the
original behaviour with the request it read: a coroutine stays a coroutine, an async generator
an async generator. Stream-request methods (Upload, reflection) read their own messages and are
left alone, as is any synchronous behaviour (this server registers none). A call answered here
is charged to the client's request rate like any other refused call (when rate limits are on).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Awaitable, Callable

import grpc

from node.errors import IdleTimeout, InvalidArgument, OssError
from node.service import client_of
from node.status import to_status

NO_MESSAGE = "the request stream carried no message"


class OneMessageInterceptor(grpc.aio.ServerInterceptor):
    """Reads the one request message of unary-request calls itself (see the module doc).

    `limiter` (optional) is charged for the calls it answers itself, which never reach the
    servicer's own rate check; `on_error(code)` counts them in the metrics."""

    def __init__(self, idle_timeout: float, *, limiter: Any = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.idle_timeout = idle_timeout
        self.limiter = limiter
        self.on_error = on_error or (lambda code: None)

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                             Awaitable[grpc.RpcMethodHandler]],
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        return self.reading_first(handler)

    def reading_first(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The stream-request handler that reads the one message, then runs `handler`."""
        streaming = handler.response_streaming
        behaviour = handler.unary_stream if streaming else handler.unary_unary
        read = self.read_request
        if inspect.isasyncgenfunction(behaviour):
            async def responses(request_iterator, context):
                request = await read(context)
                async for response in behaviour(request, context):
                    yield response
            body = responses
        elif inspect.iscoroutinefunction(behaviour):
            async def respond(request_iterator, context):
                return await behaviour(await read(context), context)
            body = respond
        else:
            return handler  # synchronous: runs in grpc's thread pool, not on this server
        make = grpc.stream_stream_rpc_method_handler if streaming else grpc.stream_unary_rpc_method_handler
        return make(body, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    async def read_request(self, context: grpc.aio.ServicerContext) -> object:
        """The call's one request message, or the call answered (AbortError raised)."""
        err: OssError
        try:
            async with asyncio.timeout(self.idle_timeout):
                message = await context.read()
        except TimeoutError:
            err = IdleTimeout(f"the call sent no request message for {self.idle_timeout:g} s")
        except grpc.aio.BaseError:  # aborted, finished or stopping: gRPC's own business
            raise
        except Exception as exc:  # a deserializer that raises (ours never do: `wire.safe`)
            err = InvalidArgument(f"the request could not be decoded ({type(exc).__name__})")
        else:
            if message is not grpc.aio.EOF:
                return message
            err = InvalidArgument(NO_MESSAGE)
        if self.limiter is not None:
            try:
                self.limiter.admit(client_of(context))
            except OssError as limited:
                err = limited
        self.on_error(err.code)
        await context.abort_with_status(to_status(err))
        raise AssertionError("unreachable: abort raises")
