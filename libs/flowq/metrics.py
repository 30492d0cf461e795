"""The Prometheus endpoint every service serves (the apiserver on its HTTP port)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from flowq.auth import AUTH_FAILURES, TokenChecker
from flowq.config import Settings


async def _metrics(_request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def metrics_route(settings: Settings) -> Route:
    """GET /metrics; with FLOWQ_METRICS_AUTH and tokens set, only with a bearer token."""
    checker = TokenChecker(settings.accepted_tokens)
    if not (settings.metrics_auth and checker.enabled):
        return Route("/metrics", _metrics, methods=["GET"])

    async def guarded(request: Request) -> Response:
        problem = checker.problem(request.headers.get("authorization"))
        if problem is not None:
            AUTH_FAILURES.labels(reason=problem).inc()
            return Response(
                "a bearer token is required for /metrics (FLOWQ_METRICS_AUTH=true)\n",
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await _metrics(request)

    return Route("/metrics", guarded, methods=["GET"])
