"""Progress of a long step (done / total, rate, ETA), reported as one line at a steady interval.

The line is the one interface: the Dagster run log shows it as written, it crosses from the
training subprocess to the run as plain Pipes log text, and the CLI recognises it
(:func:`parse_progress`) to draw a bar on a terminal. :meth:`Progress.line` writes it and
:data:`_LINE` reads it, side by side here, so the two cannot drift apart.

Plain Python on purpose: the audit and training cores report through it without knowing Dagster.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

DEFAULT_INTERVAL_SECONDS = 5.0
BAR_WIDTH = 24

# "hashing test: 1,200 / 4,000 images (30%), 410 images/s, ETA 7s"; a label holds no colon.
_LINE = re.compile(
    r"(?P<label>[^:\n]+): (?P<done>[\d,]+) / (?P<total>[\d,]+) (?P<unit>[^()\n]+) \(\d+%\)(?P<details>.*)")


def format_duration(seconds: float) -> str:
    """``7s``, ``2m05s`` or ``1h02m``: as precise as a person waiting needs."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _format_rate(per_second: float) -> str:
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.1f}"


@dataclass(frozen=True)
class ProgressReporter:
    """Where one step's progress lines go (``report``), under which label, and how often."""

    report: Callable[[str], None]
    label: str
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    clock: Callable[[], float] = time.monotonic

    def start(self, total: int, unit: str) -> Progress:
        return Progress(self, total, unit)


def _discard(line: str) -> None:
    """Progress of a caller that asked for none: the core stays quiet when used as a library."""


SILENT = ProgressReporter(report=_discard, label="")


def start_progress(reporter: ProgressReporter | None, total: int, unit: str) -> Progress:
    """Progress of ``total`` units of work, reported through ``reporter``; silent without one."""
    return (reporter or SILENT).start(total, unit)


class Progress:
    """The count of one step's units done; reports a line when it starts (a slow first unit is not
    a silence), then at most every ``interval_seconds``, and once at :meth:`finish`; nothing at all
    when there is nothing to do."""

    def __init__(self, reporter: ProgressReporter, total: int, unit: str):
        self._reporter = reporter
        self.total = total
        self.unit = unit
        self.done = 0
        self.stage = ""  # where a multi-stage step is, e.g. "epoch 3/20"; shown after the percentage
        self._started = self._last_report = reporter.clock()
        if total:
            reporter.report(self.line(self._started, finished=False))

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = self._reporter.clock()
        if now - self._last_report >= self._reporter.interval_seconds:
            self._last_report = now
            self._reporter.report(self.line(now, finished=False))

    def finish(self) -> None:
        """Report the final line; a step may finish short of its total (training that stops early)."""
        if self.total:
            self._reporter.report(self.line(self._reporter.clock(), finished=True))

    def line(self, now: float, finished: bool) -> str:
        percent = 100 * self.done // self.total if self.total else 100
        parts = [f"{self._reporter.label}: {self.done:,} / {self.total:,} {self.unit} ({percent}%)"]
        if self.stage:
            parts.append(self.stage)
        elapsed = now - self._started
        if self.done and elapsed > 0:
            rate = self.done / elapsed
            parts.append(f"{_format_rate(rate)} {self.unit}/s")
            parts.append(f"took {format_duration(elapsed)}" if finished
                         else f"ETA {format_duration(max(0, self.total - self.done) / rate)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class ProgressLine:
    """A progress line read back: what a bar needs."""

    label: str
    done: int
    total: int
    unit: str
    details: str  # what follows the percentage: stage, rate, ETA

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def bar(self, width: int) -> str:
        """``label [#######.........]  30% 1,200 / 4,000 images, 410 images/s, ETA 7s``, cut to ``width``."""
        fraction = min(1.0, self.done / self.total) if self.total else 1.0
        filled = round(fraction * BAR_WIDTH)
        text = (f"{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {100 * fraction:3.0f}% "
                f"{self.done:,} / {self.total:,} {self.unit}{self.details}")
        return text[:width]


def _count(text: str) -> int:
    return int(text.replace(",", ""))


def parse_progress(message: str) -> ProgressLine | None:
    """The progress line in ``message``, or None when it is any other message."""
    match = _LINE.fullmatch(message)
    if match is None:
        return None
    return ProgressLine(match["label"], _count(match["done"]), _count(match["total"]), match["unit"],
                        match["details"])


class ProgressDisplay:
    """Shows progress lines on ``stream``: one bar redrawn in place on a terminal; elsewhere (CI,
    a pipe) each line as it comes, so a log never goes quiet for longer than the report interval.
    Messages that are not progress lines are ignored."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._terminal = stream.isatty()
        self._open_label: str | None = None  # the label whose bar is drawn and not yet ended

    def __call__(self, message: str) -> None:
        progress = parse_progress(message)
        if progress is None:
            return
        if not self._terminal:
            print(message, file=self._stream, flush=True)
            return
        if self._open_label not in (None, progress.label):
            self._stream.write("\n")  # a step that stopped short (early stopping) keeps its last bar
        width = shutil.get_terminal_size().columns - 1
        self._stream.write("\r" + progress.bar(width) + "\x1b[K")  # \x1b[K: clear the rest of a longer bar
        self._open_label = None if progress.finished else progress.label
        if progress.finished:
            self._stream.write("\n")
        self._stream.flush()

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """End a bar still open, so whatever is printed next starts on its own line."""
        if self._open_label is not None:
            self._stream.write("\n")
            self._stream.flush()
            self._open_label = None
