"""The REST gateway: a Starlette app that forwards each HTTP request as a real gRPC call.

This is the grpc-gateway design: the gateway dials the process's own gRPC server over a
loopback channel, so REST gets exactly gRPC's validation, errors, interceptors and auth.
Unary calls answer JSON; server-streaming calls answer newline-delimited JSON, one message
per line, flushed as each arrives, and the gRPC call is cancelled when the client goes away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.routing import Route as StarletteRoute
from starlette.types import Receive, Scope, Send

from flowq.rest.errors import HTTP_STATUS, GatewayError, rpc_error_body, status_body
from flowq.rest.openapi import openapi_document
from flowq.rest.routes import Route, Router, compile_routes
from flowq.rest.transcode import build_request, render_response

logger = logging.getLogger("flowq.rest")

#: HTTP headers passed on to the gRPC call as metadata (lowercase keys).
FORWARDED_HEADERS = ("authorization", "x-request-id")
REQUEST_ID_HEADER = "x-request-id"
NDJSON = "application/x-ndjson"


def build_gateway(
    channel: grpc.aio.Channel,
    services: Sequence[ServiceDescriptor],
    *,
    extra_routes: Sequence[BaseRoute] = (),
    max_body_bytes: int = 4 * 1024 * 1024,
    timeout_seconds: float = 30.0,
) -> Starlette:
    """A Starlette app serving every `google.api.http` route of `services` over `channel`.

    `extra_routes` (/metrics, /healthz, ...) are matched first, then `GET /openapi.json`,
    then the API routes.
    """
    services = list(services)
    gateway = _Gateway(channel, compile_routes(services), max_body_bytes, timeout_seconds)
    openapi = _OpenApi(openapi_document(services))
    return Starlette(
        routes=[
            *extra_routes,
            StarletteRoute("/openapi.json", openapi),
            StarletteRoute("/{path:path}", gateway),  # an ASGI app: every method reaches it
        ],
        exception_handlers={HTTPException: _http_exception, Exception: _unexpected},
    )


class _OpenApi:
    """`GET /openapi.json`; an ASGI app so that other methods get a JSON 405, not a 404."""

    def __init__(self, document: dict[str, Any]) -> None:
        self._body = _dumps(document)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] in ("GET", "HEAD"):
            response = Response(self._body, media_type="application/json")
        else:
            error = GatewayError(
                405,
                f"{scope['method']} is not allowed on /openapi.json; allowed: GET",
                code=grpc.StatusCode.UNIMPLEMENTED,
            )
            response = _json(405, error.body(), {"Allow": "GET, HEAD"})
        await response(scope, receive, send)


class _Gateway:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        routes: Sequence[Route],
        max_body_bytes: int,
        timeout_seconds: float,
    ) -> None:
        self._router = Router(routes)
        self._max_body_bytes = max_body_bytes
        self._timeout = timeout_seconds
        self._callables: dict[str, Any] = {}
        for route in routes:
            if route.full_method in self._callables:
                continue
            factory = channel.unary_stream if route.server_streaming else channel.unary_unary
            self._callables[route.full_method] = factory(
                route.full_method,
                request_serializer=route.request_class.SerializeToString,
                response_deserializer=route.response_class.FromString,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handle(Request(scope, receive))
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        headers = {REQUEST_ID_HEADER: request_id}
        try:
            match = self._router.match(request.method, _raw_path(request.scope))
            route = match.route
            body = await self._read_body(request) if route.body else b""
            message = build_request(route, match.params, request.scope["query_string"], body)
            metadata = _metadata(request, request_id)
            call = self._callables[route.full_method]
            if route.server_streaming:  # no deadline: a stream lasts as long as it needs
                return _NdjsonStream(call(message, metadata=metadata), route, headers)
            reply = await call(message, metadata=metadata, timeout=self._timeout)
            return _json(200, render_response(route, reply), headers)
        except GatewayError as err:
            return _json(err.http_status, err.body(), {**headers, **err.headers})
        except grpc.RpcError as err:
            status, body = rpc_error_body(err)
            return _json(status, body, {**headers, **_challenge(status)})
        except ClientDisconnect:
            return Response(status_code=499, headers=headers)
        except Exception:
            logger.exception("REST gateway request failed", extra={"request_id": request_id})
            return _json(500, _internal_body(request_id), headers)

    async def _read_body(self, request: Request) -> bytes:
        limit = self._max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"request body is larger than {limit} bytes",
        code=grpc.StatusCode.RESOURCE_EXHAUSTED,
    )


def _raw_path(scope: Scope) -> str:
    """The path as sent, still percent-encoded, without the app's root_path."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1").split("?", 1)[0] if raw else quote(scope["path"])
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


def _metadata(request: Request, request_id: str) -> list[tuple[str, str]]:
    metadata = [(REQUEST_ID_HEADER, request_id)]
    for name in FORWARDED_HEADERS:
        value = request.headers.get(name)
        if value is None or name == REQUEST_ID_HEADER:
            continue
        metadata.append((name, value))
    for name, value in metadata:
        if not all(" " <= char <= "~" for char in value):
            raise GatewayError(400, f"header {name!r} holds characters gRPC metadata cannot carry")
    return metadata


def _json(status: int, content: Any, headers: dict[str, str]) -> Response:
    return Response(
        _dumps(content), status_code=status, headers=headers, media_type="application/json"
    )


def _dumps(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _internal_body(request_id: str) -> dict[str, Any]:
    return status_body(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")


class _NdjsonStream(Response):
    """A server-streaming call as newline-delimited JSON.

    The HTTP status waits for the first message, so a call that fails at once (NOT_FOUND, ...)
    answers with its own status and a JSON error body, as grpc-gateway does; after the first
    line the status is 200 and an error becomes a last line `{"error": {...}}`. A task watches
    for the client's disconnect the whole time and cancels the gRPC call when it comes.
    """

    media_type = NDJSON

    def __init__(self, call: Any, route: Route, headers: dict[str, str]) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self._call = call
        self._route = route
        self._headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.create_task(self._pump(scope, receive, send))
        watch = asyncio.create_task(_wait_for_disconnect(receive))
        try:
            await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._call.cancel()  # a no-op when the call already ended
            for task in (pump, watch):
                task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
        error = None if pump.cancelled() else pump.exception()
        if isinstance(error, Exception) and not isinstance(error, OSError):
            # OSError: the client went away in the middle of a write; nothing to report.
            logger.error("NDJSON stream failed", exc_info=error, extra=self._log_extra)

    @property
    def _log_extra(self) -> dict[str, str]:
        return {"request_id": self._headers.get(REQUEST_ID_HEADER, "")}

    async def _pump(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            message = await self._call.read()
        except grpc.RpcError as err:
            status, body = rpc_error_body(err)
            await _json(status, body, {**self._headers, **_challenge(status)})(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            while message is not grpc.aio.EOF:
                line = _dumps(render_response(self._route, message)) + b"\n"
                await send({"type": "http.response.body", "body": line, "more_body": True})
                message = await self._call.read()
        except grpc.RpcError as err:
            await self._send_error(send, rpc_error_body(err)[1])
        except Exception:
            logger.exception("NDJSON stream failed", extra=self._log_extra)
            await self._send_error(send, _internal_body(self._log_extra["request_id"]))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_error(self, send: Send, body: dict[str, Any]) -> None:
        line = _dumps({"error": body}) + b"\n"
        await send({"type": "http.response.body", "body": line, "more_body": True})


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (extra routes, /openapi.json) in the same JSON shape."""
    assert isinstance(exc, HTTPException)
    code = next((c for c, s in HTTP_STATUS.items() if s == exc.status_code), None)
    if code is None:
        code = grpc.StatusCode.UNIMPLEMENTED if exc.status_code == 405 else grpc.StatusCode.UNKNOWN
    headers = dict(exc.headers or {})
    return _json(exc.status_code, status_body(code, str(exc.detail)), headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    """Last resort for extra routes: a JSON INTERNAL body, never a traceback page."""
    request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
    logger.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
    return _json(500, _internal_body(request_id), {REQUEST_ID_HEADER: request_id})


def _challenge(status: int) -> dict[str, str]:
    """RFC 6750: a 401 says which scheme to use."""
    return {"WWW-Authenticate": "Bearer"} if status == 401 else {}
