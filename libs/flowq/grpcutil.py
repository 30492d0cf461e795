"""gRPC plumbing shared by every service: server options and the one error interceptor.

Servicers and use cases raise `FlowqError`s; the interceptor maps them to gRPC status once.
INVALID_ARGUMENT carries a google.rpc.BadRequest naming the field, in the standard
`grpc-status-details-bin` trailer, so the REST gateway and clients can show it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import redis.exceptions
import sqlalchemy.exc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import Counter, Histogram

from flowq.errors import FlowqError

log = logging.getLogger(__name__)

RPCS_HANDLED = Counter(
    "flowq_grpc_server_handled_total",
    "gRPC calls finished by this server, by method and status code.",
    ["method", "code"],
)
RPC_SECONDS = Histogram(
    "flowq_grpc_server_handling_seconds",
    "Time to answer a unary gRPC call (streams: until the stream ends).",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.lb_policy_name", "round_robin"),
]


def status_details(
    code: grpc.StatusCode, message: str, field: str | None
) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying a google.rpc.Status (with a BadRequest when a field is named)."""
    status = status_pb2.Status(code=code.value[0], message=message)
    if field:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
                ]
            )
        )
        status.details.append(detail)
    return (("grpc-status-details-bin", status.SerializeToString()),)


_DEPENDENCY_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    TimeoutError,
    ConnectionError,
)


def _dependency(exc: BaseException) -> str:
    if isinstance(exc, redis.exceptions.RedisError):
        return "Redis"
    if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
        return "the database"
    return "a dependency"


def request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and value:
            return str(value)[:64]
    return uuid.uuid4().hex[:16]


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: BaseException) -> None:
    if isinstance(exc, FlowqError):
        code = grpc.StatusCode[exc.status]
        if code is grpc.StatusCode.INTERNAL:
            log.error("internal error in %s: %s", method, exc.message)
        await context.abort(
            code, exc.message, trailing_metadata=status_details(code, exc.message, exc.field)
        )
    if isinstance(exc, _DEPENDENCY_ERRORS):
        rid = request_id(context)
        log.warning("dependency unavailable in %s: %s", method, exc, extra={"request_id": rid})
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"{_dependency(exc)} is unavailable right now; try again shortly (request id {rid})",
        )
    rid = request_id(context)
    log.error("unexpected error in %s", method, exc_info=exc, extra={"request_id": rid})
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error; the server log has the details under request id {rid}",
    )


def _observe(method: str, started: float, context: grpc.aio.ServicerContext) -> None:
    code = context.code() if hasattr(context, "code") else None
    name = code.name if isinstance(code, grpc.StatusCode) else "OK"
    RPCS_HANDLED.labels(method=method, code=name).inc()
    RPC_SECONDS.labels(method=method).observe(time.perf_counter() - started)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps FlowqError to its status, and anything unexpected to INTERNAL without internals;
    counts every call by method and code (flowq_grpc_server_handled_total)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    return await inner(request, context)
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as exc:  # noqa: BLE001 - mapped, never leaked
                    await _abort(context, method, exc)
                finally:
                    _observe(method, started, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    raise
                except Exception as exc:  # noqa: BLE001
                    await _abort(context, method, exc)
                finally:
                    _observe(method, started, context)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
