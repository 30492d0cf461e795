"""Bearer-token authentication of gRPC calls (and so of REST, which the gateway forwards).

With tokens configured, every call needs `authorization: Bearer <token>`, except health
checks and reflection, which orchestrators and grpcurl use without credentials. Tokens are
compared in constant time and never logged. Which tokens a service accepts:
FLOWQ_API_TOKENS, plus FLOWQ_INTERNAL_TOKEN (what the dispatcher presents to executors).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from prometheus_client import Counter

OPEN_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

AUTH_FAILURES = Counter(
    "flowq_auth_failures_total",
    "Calls refused for a missing or wrong bearer token.",
    ["reason"],
)


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class TokenChecker:
    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens if t]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def problem(self, header: str | None) -> str | None:
        """None when `header` carries an accepted token, else what is wrong (safe to show)."""
        if not header:
            return "missing"
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "malformed"
        given = token.strip().encode()
        # Compare with every token, always: the time taken says nothing about which matched.
        matched = False
        for accepted in self._tokens:
            matched |= hmac.compare_digest(given, accepted)
        return None if matched else "invalid"


_MESSAGES = {
    "missing": "this server requires a bearer token: send the header 'authorization: Bearer "
    "<token>' (flowq CLI: --token or FLOWQ_TOKEN)",
    "malformed": "the authorization header must be 'Bearer <token>'",
    "invalid": "the bearer token is not accepted by this server; check the token you were given",
}


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without an accepted bearer token (UNAUTHENTICATED), before any handler."""

    def __init__(self, checker: TokenChecker) -> None:
        self.checker = checker

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if not self.checker.enabled or method.startswith(OPEN_METHOD_PREFIXES):
            return await continuation(handler_call_details)
        header = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
        problem = self.checker.problem(header)
        if problem is None:
            return await continuation(handler_call_details)
        AUTH_FAILURES.labels(reason=problem).inc()
        handler = await continuation(handler_call_details)
        return _refusing(handler, _MESSAGES[problem])


def _refusing(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler | None:
    if handler is None:
        return None

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            stream, handler.request_deserializer, handler.response_serializer
        )
    return grpc.unary_unary_rpc_method_handler(
        unary, handler.request_deserializer, handler.response_serializer
    )
