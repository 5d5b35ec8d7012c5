"""Connection rules uvicorn does not have: a deadline for a request's headers, room for
new connections when idle ones fill the table, and probes that bypass the concurrency cap.

uvicorn times out only keep-alive connections *after* a response; a connection that
never sends a byte, or sends its headers one byte at a time (slowloris), is kept
forever, and once `limit_concurrency` connections are open every request, liveness
included, gets uvicorn's own 503. Here:

- the headers of each request must arrive within `header_timeout` seconds of the
  connection opening (or of the first byte of the next request on a kept-alive
  connection); otherwise the connection is closed;
- when a new connection would reach the cap, the oldest connections that are not in
  the middle of a request (idle, or still sending headers) are closed to make room, so
  a flood of idle sockets cannot lock everyone out;
- the health and metrics routes (`PROBE_PATHS`) are never answered with the cap's 503:
  a kubelet probe must see the process alive even while it sheds load.

`listen` binds the address before uvicorn starts, so a taken port is one `PortInUse`
line (uvicorn would log its own error and exit 3), and `quiet_logging` keeps uvicorn's
start-up chatter out of the output: the server says one line once it serves.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
import sys
import time
from collections.abc import Iterable
from typing import Any, Literal

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ondeck_server.serve.asgi import OPEN_PATHS
from ondeck_server.serve.errors import PortInUse, StartupError
from ondeck_server.serve.settings import ServeSettings

#: uvicorn's default listen backlog
BACKLOG = 2048

#: Requests that skip uvicorn's concurrency cap: the routes that need no token either
#: (cheap, answered without the model).
PROBE_PATHS = frozenset(path.encode() for path in OPEN_PATHS)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the three rules of this module."""

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self.opened = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()
        limit = self.limit_concurrency
        if limit is not None and len(self.connections) >= limit:
            self._evict_idle(len(self.connections) - limit + 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._start_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        if httptools.parse_url(self.url).path in PROBE_PATHS:
            saved, self.limit_concurrency = self.limit_concurrency, None
            try:
                super().on_headers_complete()
            finally:
                self.limit_concurrency = saved
            return
        super().on_headers_complete()

    # ------------------------------------------------------------------ helpers
    @property
    def busy(self) -> bool:
        """True while a request of this connection is being answered."""
        return self.cycle is not None and not self.cycle.response_complete

    def _start_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _evict_idle(self, count: int) -> None:
        idle = sorted(
            (
                c
                for c in self.connections
                if c is not self and isinstance(c, GuardedHttpToolsProtocol) and not c.busy
            ),
            key=lambda c: c.opened,
        )
        for conn in idle[:count]:
            conn.connections.discard(conn)
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.close()


def protocol_class(*, header_timeout: float) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to hand to `uvicorn.Config(http=...)`."""
    return type(
        "OndeckHttpProtocol", (GuardedHttpToolsProtocol,), {"header_timeout": header_timeout}
    )


def uvicorn_config(
    app: Any, settings: ServeSettings, *, lifespan: Literal["on", "off"]
) -> uvicorn.Config:
    """The one uvicorn configuration of both servers (tensor and language model): the
    guarded protocol above, uvloop, no access log, no Server or X-Forwarded-For handling,
    the drain timeout, and the connection cap (idle connections are closed first and
    probes skip it)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_class(header_timeout=settings.header_timeout),
        loop="uvloop",
        lifespan=lifespan,
        access_log=False,
        server_header=False,
        # Client addresses are not used: skip uvicorn's X-Forwarded-For middleware.
        proxy_headers=False,
        timeout_graceful_shutdown=max(1, math.ceil(settings.drain_timeout)),
        limit_concurrency=settings.max_connections,
        log_config=None,
    )


def listen(settings: ServeSettings) -> socket.socket:
    """A socket bound to `--host`:`--port` and listening, for `uvicorn.Server.run(sockets=…)`.
    Raises `PortInUse` when another process holds the port, `StartupError` when the
    address cannot be used otherwise."""
    host, port = settings.host, settings.port
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot listen on {host}:{port}: {exc.strerror}; give an address of this"
            " machine with --host"
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"port {port} on {host} is in use; stop the process that listens there or"
                " pick another port with --port (--port 0 picks a free one)"
            ) from None
        raise StartupError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host and --port"
        ) from None
    return sock


def quiet_logging() -> None:
    """Log lines as `LEVEL logger: message`; uvicorn's own only from warnings up (its
    start-up and shutdown lines would come before a load error and say nothing)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


def announce(name: str, servers: Iterable[asyncio.Server]) -> None:
    """The one line that says the model serves, and where (tests and `ondeck run` read
    the address from it)."""
    for server in servers:
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            print(
                f"ondeck-server: serving model {name!r} on http://{host}:{port}",
                file=sys.stderr,
                flush=True,
            )
