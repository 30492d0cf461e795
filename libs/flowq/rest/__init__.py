"""flowq.rest: the generic REST gateway, derived from `google.api.http` annotations.

`build_gateway(channel, services)` returns a Starlette app that transcodes HTTP/JSON to gRPC
calls on `channel` and back; `openapi_document(services)` describes the same routes.
"""

from flowq.rest.gateway import build_gateway
from flowq.rest.openapi import openapi_document

__all__ = ["build_gateway", "openapi_document"]
