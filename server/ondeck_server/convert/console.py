"""What `ondeck-server convert` shows a person on stderr while it works: one line per
stage, a download bar, a spinner with the elapsed time on a terminal while a stage runs
longer than a second, and what the libraries underneath print (torch, onnx,
onnxruntime warnings), captured and shown once, tidy, after the stage it came from.

The libraries write to file descriptors 1 and 2 from C++ as well as from Python, so the
capture is at the descriptors: both go to a temporary file while the pipeline runs, and
the console draws on a duplicate of the real stderr. Known noise (torch's note that
torchvision is missing, its TorchScript graph dumps, the exporter's progress lines) is
dropped; anything else is shown as `  note: …` lines under the stage.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.status import Status
from rich.text import Text

from ondeck_server.convert.bounds import human

#: A stage shorter than this gets no spinner (it would only flicker).
SPINNER_AFTER_S = 1.0
#: At most this many captured lines are shown under one stage.
MAX_NOTES = 5
STAGE_WIDTH = 9
#: What the spinner says between stages until the next one announces itself (a pipeline
#: that reports only stage ends, like the language-model one, shows only this).
WORKING = "working"
#: Nothing follows these stages but the summary.
_LAST = {"write", "upload"}
# glog-style prefixes torch's C++ and logging put before a message:
# `W1203 09:14:05.900000 6429 torch/onnx/_internal/exporter/_registration.py:107] `.
_GLOG = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [^\]]+\] ")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NOISE = (
    re.compile(r"torchvision is not installed"),
    re.compile(r"^\[torch\.onnx\]"),
)
# A TorchScript graph dump: its header, then indented IR lines up to a blank line.
_DUMP_HEADER = re.compile(r"^Torch IR graph at exception")


def tidy(text: str) -> list[str]:
    """The captured `text` as the distinct lines worth showing, in order."""
    lines: list[str] = []
    in_dump = False
    for raw in text.splitlines():
        line = _GLOG.sub("", _ANSI.sub("", raw)).rstrip()
        if _DUMP_HEADER.match(line):
            in_dump = True
            continue
        if in_dump:
            in_dump = bool(line.strip())
            continue
        if not line.strip() or any(p.search(line) for p in _NOISE):
            continue
        if line.strip() not in lines:
            lines.append(line.strip())
    return lines


class _BinaryTransferSpeed(ProgressColumn):
    """Transfer speed in the units of every other size ondeck prints (KiB, MiB)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("", style="progress.data.speed")
        return Text(f"{human(speed)}/s", style="progress.data.speed")


class _Capture:
    """fds 1 and 2 into a temporary file while the pipeline runs; `drain()` returns what
    came since the last call. C++ code writes to either (torch's TorchScript exporter
    dumps its graph to stdout, which must carry only the JSON summary). Only where
    sys.stderr really is fd 2 (not under a test runner that swapped it): elsewhere
    nothing is captured."""

    _FDS = (1, 2)

    def __init__(self) -> None:
        self.saved: dict[int, int] = {}
        self.file: IO[bytes] | None = None
        self.offset = 0

    def start(self) -> IO[str]:
        """Begin capturing; returns a stream onto the real stderr for the console."""
        try:
            real = sys.stderr.fileno() == 2 and sys.stdout.fileno() == 1
        except (AttributeError, ValueError, OSError):
            real = False
        if not real:
            return sys.stderr
        sys.stdout.flush()
        sys.stderr.flush()
        # Open until stop(): it outlives this call.
        self.file = tempfile.TemporaryFile()  # noqa: SIM115
        for fd in self._FDS:
            self.saved[fd] = os.dup(fd)
            os.dup2(self.file.fileno(), fd)
        return os.fdopen(os.dup(self.saved[2]), "w", encoding="utf-8", errors="replace")

    def drain(self) -> str:
        if self.file is None:
            return ""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(ValueError, OSError):
                stream.flush()
        # pread: the writers share the file's offset, which a seek would move.
        size = os.fstat(self.file.fileno()).st_size
        data = os.pread(self.file.fileno(), max(0, size - self.offset), self.offset)
        self.offset += len(data)
        return data.decode("utf-8", errors="replace")

    def stop(self) -> str:
        """Stop capturing (fds 1 and 2 are the real ones again); returns what is left."""
        rest = self.drain()
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self.saved = {}
        if self.file is not None:
            self.file.close()
            self.file = None
        return rest


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Python warnings as `Category: message`, without the source line under it."""
    sys.stderr.write(f"{category.__name__}: {message}\n")


class ConsoleEvents:
    """The pipeline's Events: stage lines, the download bar, the spinner, the notes."""

    def __init__(
        self,
        console: Console,
        capture: _Capture | None = None,
        *,
        spinner_after_s: float = SPINNER_AFTER_S,
    ) -> None:
        self.console = console
        self.capture = capture
        self.spinner_after_s = spinner_after_s
        self.done: list[str] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._status: Status | None = None
        self._bar_open = False

    # -- Events

    def begin(self, name: str) -> None:
        """A stage starts: on a terminal, a spinner appears if it lasts past a second."""
        self._stop_spinner()
        if not self.console.is_terminal or self._bar_open:
            return
        started = time.monotonic()
        self._timer = threading.Timer(self.spinner_after_s, self._spin, args=(name, started))
        self._timer.daemon = True
        self._timer.start()

    def stage(self, name: str, seconds: float, detail: str) -> None:
        self._stop_spinner()
        self.done.append(name)
        self.console.print(
            f"{name:<{STAGE_WIDTH}} {seconds:7.2f} s  {detail}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        self.notes()
        if name not in _LAST:
            self.begin(WORKING)

    def bytes_progress(self) -> _RichBar:
        return _RichBar(self)

    # -- the rest

    def notes(self) -> None:
        """Show what the libraries printed since the last stage, once, tidy."""
        if self.capture is None:
            return
        self.show_notes(tidy(self.capture.drain()))

    def show_notes(self, lines: list[str]) -> None:
        for line in lines[:MAX_NOTES]:
            self.console.print(f"  note: {line}", markup=False, highlight=False, soft_wrap=True)
        if len(lines) > MAX_NOTES:
            self.console.print(
                f"  note: … and {len(lines) - MAX_NOTES} more lines", markup=False, highlight=False
            )

    def close(self) -> None:
        self._stop_spinner()

    def _spin(self, name: str, started: float) -> None:
        with self._lock:
            if self._timer is None or self._bar_open:
                return
            status = Status(self._spinner_text(name, started), console=self.console)
            status.start()
            self._status = status
        self._tick(name, started, status)

    def _tick(self, name: str, started: float, status: Status) -> None:
        """Redraw the elapsed time four times a second until the stage ends."""

        def loop() -> None:
            while True:
                time.sleep(0.25)
                with self._lock:
                    if self._status is not status:
                        return
                    status.update(self._spinner_text(name, started))

        threading.Thread(target=loop, daemon=True).start()

    @staticmethod
    def _spinner_text(name: str, started: float) -> str:
        return f"{name:<{STAGE_WIDTH}} {time.monotonic() - started:7.1f} s"

    def _stop_spinner(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._status is not None:
                self._status.stop()
                self._status = None


class _RichBar:
    """The download (or hashing) bar, in binary units."""

    def __init__(self, events: ConsoleEvents) -> None:
        self.events = events
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def start(self, label: str, total: int | None) -> None:
        # One live display at a time: the bar replaces the spinner.
        self.events._stop_spinner()
        self.events._bar_open = True
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            _BinaryTransferSpeed(),
            TimeRemainingColumn(),
            console=self.events.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(label, total=total)

    def advance(self, n: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, n)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.events._bar_open = False


@contextlib.contextmanager
def stage_console() -> Iterator[ConsoleEvents]:
    """ConsoleEvents for one pipeline run, with the libraries' output captured until the
    block ends (then shown under the last stage, or before the error line)."""
    capture = _Capture()
    stream = capture.start()
    events = ConsoleEvents(Console(file=stream), capture)
    events.begin("fetch")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            yield events
    finally:
        events.close()
        events.show_notes(tidy(capture.stop()))
        with contextlib.suppress(ValueError, OSError):
            events.console.file.flush()
        if stream is not sys.stderr:
            stream.close()
