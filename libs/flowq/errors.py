"""The flowq exception tree.

Every error ends in `Error`, derives from `FlowqError`, says whether retrying may help, and
carries the gRPC status name it maps to. Business code raises these and never imports grpc;
one server interceptor (flowq.grpcutil) turns them into gRPC status, and the REST gateway maps
that status to HTTP.
"""

from __future__ import annotations


class FlowqError(Exception):
    """Root of every flowq error."""

    retryable: bool = False
    #: Name of the grpc.StatusCode this error maps to.
    status: str = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: The request field at fault, for INVALID_ARGUMENT.
        self.field = field


class ConfigError(FlowqError):
    """A FLOWQ_* variable is missing or malformed: fix the environment and restart."""


class InvalidArgumentError(FlowqError):
    status = "INVALID_ARGUMENT"


class NotFoundError(FlowqError):
    status = "NOT_FOUND"


class AlreadyExistsError(FlowqError):
    status = "ALREADY_EXISTS"


class FailedPreconditionError(FlowqError):
    status = "FAILED_PRECONDITION"


class ResourceExhaustedError(FlowqError):
    retryable = True
    status = "RESOURCE_EXHAUSTED"


class UnavailableError(FlowqError):
    """A dependency (database, Redis, an executor) cannot be reached now; try again later."""

    retryable = True
    status = "UNAVAILABLE"


class FencedError(FlowqError):
    """A write found the task's owner or epoch moved: another owner has the task."""

    status = "ABORTED"
