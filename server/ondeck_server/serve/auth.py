"""Bearer-token authentication: where the token comes from (a file, as a mounted Secret
gives it, or a setting) and the constant-time check of an `Authorization` header.

The token is read once at start-up; rotate it by restarting the pod. This module does
not decide which routes are protected (app.py does) and sends no responses.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from ondeck_server.serve.errors import StartupError
from ondeck_server.serve.settings import ServeSettings


def load_token(settings: ServeSettings) -> str | None:
    """The configured token, or None when auth is off. Surrounding whitespace (the
    trailing newline of `echo token > file`) is not part of the token."""
    if settings.auth_token_file is not None:
        path = settings.auth_token_file
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise StartupError(f"cannot read --auth-token-file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError:
            raise StartupError(f"--auth-token-file {path} is not UTF-8 text") from None
        where = f"--auth-token-file {path}"
    elif settings.auth_token is not None:
        token = settings.auth_token.get_secret_value().strip()
        where = "--auth-token"
    else:
        return None
    if not token:
        raise StartupError(f"{where} is empty: give a non-empty bearer token or turn auth off")
    if any(c.isspace() for c in token) or not token.isprintable() or not token.isascii():
        raise StartupError(f"{where}: the token must be printable ASCII without spaces")
    return token


class BearerAuth:
    """Checks `Authorization: Bearer <token>` in constant time."""

    def __init__(self, token: str) -> None:
        self._token = token.encode("ascii")

    def check(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        for key, value in headers:
            if key == b"authorization":
                scheme, _, given = value.partition(b" ")
                # Compare even on a wrong scheme, so timing tells nothing either way.
                same = hmac.compare_digest(given.strip(), self._token)
                return same and scheme.lower() == b"bearer"
        return False
