"""gRPC status → HTTP status, and the JSON error body (the shape of google.rpc.Status).

Every error the gateway returns, whether the gRPC server said it or the gateway found it
itself (bad JSON, unknown route), is `{"code": <grpc code>, "message": ..., "details": [...]}`.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

# Imported for its side effect: the standard detail types (BadRequest, ErrorInfo, ...) join
# the descriptor pool, so their Any payloads render as JSON objects.
from google.rpc import error_details_pb2, status_pb2  # noqa: F401

logger = logging.getLogger("flowq.rest")

STATUS_DETAILS_KEY = "grpc-status-details-bin"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"

HTTP_STATUS: Mapping[grpc.StatusCode, int] = MappingProxyType(
    {
        grpc.StatusCode.OK: 200,
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.OUT_OF_RANGE: 400,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.ALREADY_EXISTS: 409,
        grpc.StatusCode.ABORTED: 409,
        grpc.StatusCode.FAILED_PRECONDITION: 412,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.CANCELLED: 499,
        grpc.StatusCode.UNIMPLEMENTED: 501,
        grpc.StatusCode.INTERNAL: 500,
        grpc.StatusCode.UNKNOWN: 500,
        grpc.StatusCode.DATA_LOSS: 500,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    }
)


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def status_body(
    code: grpc.StatusCode, message: str, details: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """`{"code", "message", "details"}` with the numeric gRPC code."""
    return {"code": code.value[0], "message": message, "details": [dict(d) for d in details]}


def bad_request_detail(field: str, description: str) -> dict[str, Any]:
    """A google.rpc.BadRequest detail naming one field, as JSON."""
    return {
        "@type": BAD_REQUEST_TYPE,
        "fieldViolations": [{"field": field, "description": description}],
    }


def details_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[dict]:
    """The `details` of the google.rpc.Status a server put in its trailing metadata, or []."""
    for key, value in metadata or ():
        if key != STATUS_DETAILS_KEY:
            continue
        try:
            raw = value if isinstance(value, bytes) else value.encode("latin-1")
            status = status_pb2.Status.FromString(raw)
        except (DecodeError, UnicodeEncodeError):
            logger.warning("ignoring a malformed %s trailer", STATUS_DETAILS_KEY)
            return []
        return [_any_to_dict(detail) for detail in status.details]
    return []


def _any_to_dict(detail: Any) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(detail)
    except (TypeError, KeyError, json_format.Error):
        # A detail type this process does not know: keep its bytes rather than drop it.
        return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode()}


def rpc_error_body(error: grpc.RpcError) -> tuple[int, dict[str, Any]]:
    """HTTP status and body for a failed gRPC call (an AioRpcError, or any grpc.Call error)."""
    code = _ask(error, "code", grpc.StatusCode.UNKNOWN)
    message = _ask(error, "details", None) or ""
    trailers = _ask(error, "trailing_metadata", ())
    return http_status(code), status_body(code, message, details_from_metadata(trailers))


def _ask(error: grpc.RpcError, name: str, default: Any) -> Any:
    # grpc.RpcError itself declares no methods; the errors grpc raises are also grpc.Call-like.
    method = getattr(error, name, None)
    return method() if callable(method) else default


class GatewayError(Exception):
    """A request the gateway refuses before (or instead of) calling gRPC."""

    def __init__(
        self,
        http_status: int,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message
        self.code = code
        self.field = field
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        details = [bad_request_detail(self.field, self.message)] if self.field else []
        return status_body(self.code, self.message, details)


def invalid_field(field: str, message: str) -> GatewayError:
    """400 INVALID_ARGUMENT with a BadRequest detail naming `field`."""
    return GatewayError(400, message, field=field)
