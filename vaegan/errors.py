"""The project's one error hierarchy.

A ``VaeganError`` is a problem the user (or a calling service) can act on: the CLI prints
its message as one line and exits non-zero; the gateway maps each subclass to the gRPC
status it carries. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class VaeganError(Exception):
    """A user-facing error with a message that says what to do."""

    #: Name of the ``grpc.StatusCode`` the gateway answers with (kept as a string so
    #: this module does not import grpc).
    grpc_code = "INTERNAL"


class InvalidInput(VaeganError):
    grpc_code = "INVALID_ARGUMENT"


class ResourceExhausted(VaeganError):
    grpc_code = "RESOURCE_EXHAUSTED"


class Unavailable(VaeganError):
    grpc_code = "UNAVAILABLE"


class NotFound(VaeganError):
    grpc_code = "NOT_FOUND"


class FailedPrecondition(VaeganError):
    """The request is fine but the server's state is not (e.g. a directions file that
    belongs to another model version): fixed by an operator, not by retrying."""

    grpc_code = "FAILED_PRECONDITION"


class DeadlineExceeded(VaeganError):
    """The caller's deadline, or the gateway's own limit on a call, passed first."""

    grpc_code = "DEADLINE_EXCEEDED"


class ImageRejected(InvalidInput):
    """An image that cannot be used; ``reason`` is a short stable key for reports."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
