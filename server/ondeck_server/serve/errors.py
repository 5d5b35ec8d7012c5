"""The inference server's errors. Each class maps to exactly one HTTP status, and its
message is what the user reads in the V2 error body `{"error": "<message>"}`:

    ServeError (500)
    ├── InvalidInput (400)        a request the server cannot run: bad JSON, unknown or
    │                             missing inputs, wrong datatype or shape, bad binary lengths
    ├── Unauthorized (401)        missing or wrong bearer token
    ├── ModelNotFound (404)       no model or model version by that name
    ├── RequestTimeout (408)      the body stopped arriving for --header-timeout seconds
    ├── PayloadTooLarge (413)     body over --max-body-bytes
    ├── ModelNotReady (503)       still loading or warming up
    ├── Overloaded (503)          the queue is full; the answer carries Retry-After
    ├── ShuttingDown (503)        SIGTERM: the drain ended before this request was run;
    │                             the answer carries Retry-After
    ├── InferenceFailed (500)     onnxruntime failed on input that passed validation
    └── StartupError (500)        the server cannot start: bad settings, unreadable model;
        │                         the CLI prints it as one line and exits 1
        └── PortInUse             another process listens on --host:--port

This module only defines the errors; the HTTP shell (app.py) renders them.
"""

from __future__ import annotations

from typing import ClassVar


class ServeError(Exception):
    """Base class: every error the server reports to a user."""

    status: ClassVar[int] = 500
    headers: ClassVar[tuple[tuple[bytes, bytes], ...]] = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServeError):
    status = 400


class Unauthorized(ServeError):
    status = 401
    headers = ((b"www-authenticate", b'Bearer realm="ondeck"'),)


class ModelNotFound(ServeError):
    status = 404


class RequestTimeout(ServeError):
    status = 408
    #: the rest of the body is not awaited: the connection closes after the answer
    headers = ((b"connection", b"close"),)


class PayloadTooLarge(ServeError):
    status = 413


class ModelNotReady(ServeError):
    status = 503


class Overloaded(ServeError):
    status = 503
    #: Seconds a client should wait before retrying; sent as `Retry-After`.
    retry_after: ClassVar[int] = 1
    headers = ((b"retry-after", b"1"),)


class ShuttingDown(ServeError):
    status = 503
    retry_after: ClassVar[int] = 1
    headers = ((b"retry-after", b"1"),)

    def __init__(
        self, message: str = "the server is shutting down; retry, another replica will answer"
    ) -> None:
        super().__init__(message)


class InferenceFailed(ServeError):
    status = 500


class StartupError(ServeError):
    status = 500


class PortInUse(StartupError):
    pass
