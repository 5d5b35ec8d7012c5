"""The errors of local mode, each one line `ErrorType: message` and one exit status:

LocalError
├── ManifestError    the manifest cannot be read or is invalid        exit 2
├── PortInUse        the address to serve on is taken                 exit 2
├── StoreFailed      the local artifact store cannot be used          exit 1
├── ConvertFailed    `ondeck-server convert` failed (its own line)   exit 1
└── ServeFailed      `ondeck-server serve` stopped or never got ready exit 1
"""

from __future__ import annotations

from typing import ClassVar


class LocalError(Exception):
    """Base class: local mode failed for a reason the user can act on."""

    exit_code: ClassVar[int] = 1

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        return f"{type(self).__name__}: {text}"


class ManifestError(LocalError):
    """The manifest file is missing, is not YAML, or is not a valid ModelDeployment."""

    exit_code = 2


class PortInUse(LocalError):
    """Something already listens on the host and port asked for."""

    exit_code = 2


class StoreFailed(LocalError):
    """The artifact store (`--store`) cannot be created, read or written."""


class ConvertFailed(LocalError):
    """`ondeck-server convert` exited non-zero. `shown` is True when it already printed
    its own one-line error on stderr, so it is not printed twice. `line` is convert's own
    error line (`ValidationFailed: …`, in manifest terms), printed as it is."""

    def __init__(self, message: str, *, shown: bool, line: str | None = None) -> None:
        super().__init__(message)
        self.shown = shown
        self.line = line

    def one_line(self) -> str:
        if self.line is not None:
            return " ".join(self.line.split())
        return super().one_line()


class ServeFailed(LocalError):
    """`ondeck-server serve` exited, or did not become ready in time."""
