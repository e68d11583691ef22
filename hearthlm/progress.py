"""Progress for long jobs (indexing, evaluation, training, PPO), shaped by where it goes.

- On a terminal: a rich bar on stderr. It stays on screen only for a job that took a second or
  more, so opening an up-to-date index or any other instant job leaves nothing behind.
- In a log (stderr is not a terminal): one plain line every ``LOG_INTERVAL`` seconds at most, and
  a closing line only for a job that already wrote one. A job shorter than the interval writes
  nothing, and a finished bar is never repeated.
- Disabled (``--json``): nothing at all.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

LOG_INTERVAL = 10.0  # seconds between two progress lines in a log
BAR_DELAY = 1.0  # a terminal bar of a shorter job is cleared when it ends

Advance = Callable[..., None]


@contextmanager
def progress_bar(
    enabled: bool,
    total: float,
    label: str,
    *,
    completed: float = 0,
    metric: str | None = None,
    stream: IO[str] | None = None,
    interval: float = LOG_INTERVAL,
) -> Iterator[Advance]:
    """Yields ``advance(n=1, value=None)``; ``value`` is shown beside the count as ``metric``.

    Args:
        enabled: False shows nothing (for ``--json`` output).
        total: The count at which the job is done.
        label: What is counted ("files", "training").
        completed: Where a resumed job starts.
        metric: Name of the value passed to ``advance`` (a loss, a reward).
        stream: Where progress goes; stderr by default.
        interval: Seconds between two lines when ``stream`` is not a terminal.

    Example:
        >>> with progress_bar(True, 3, "files") as advance:
        ...     for _ in range(3):
        ...         advance()
    """
    if not enabled:
        yield lambda n=1, value=None: None
        return
    stream = stream or sys.stderr
    if _is_terminal(stream):
        with _terminal_bar(stream, total, label, completed, metric) as advance:
            yield advance
        return
    log = _LogLines(stream, total, label, completed, metric, interval)
    yield log.advance
    log.close()


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def _terminal_bar(
    stream: IO[str], total: float, label: str, completed: float, metric: str | None
) -> Iterator[Advance]:
    from rich.console import Console
    from rich.progress import Progress, TextColumn

    columns = [*Progress.get_default_columns()]
    if metric:
        columns.append(TextColumn(f"{metric} {{task.fields[value]}}"))
    # The file is bound now, so output captured later (per-file warnings) never takes the bar.
    progress = Progress(*columns, console=Console(file=stream))
    task = progress.add_task(label, total=total, completed=int(completed), value="-")
    begun = time.monotonic()

    def advance(n: float = 1, value: float | None = None) -> None:
        shown = f"{value:.4f}" if value is not None else "-"
        progress.update(task, advance=n, value=shown)

    progress.start()
    try:
        yield advance
    finally:
        # An instant job's bar is cleared instead of left behind (rich reads this at stop).
        progress.live.transient = time.monotonic() - begun < BAR_DELAY
        progress.stop()


class _LogLines:
    """Progress as plain lines, for logs and pipes."""

    def __init__(
        self,
        stream: IO[str],
        total: float,
        label: str,
        completed: float,
        metric: str | None,
        interval: float,
    ) -> None:
        self.stream, self.total, self.label = stream, total, label
        self.done, self.metric, self.interval = completed, metric, interval
        self.value: float | None = None
        self.begun = self.last = time.monotonic()
        self.lines = 0

    def advance(self, n: float = 1, value: float | None = None) -> None:
        self.done += n
        if value is not None:
            self.value = value
        now = time.monotonic()
        if now - self.last >= self.interval and self.done < self.total:
            self.last = now
            self._write(now, finished=False)

    def close(self) -> None:
        if self.lines:  # a short job wrote nothing and closes with nothing
            self._write(time.monotonic(), finished=True)

    def _write(self, now: float, finished: bool) -> None:
        # "files: 120/400 (30%), 0:42 elapsed, about 1:38 left, loss 0.4312"
        elapsed = now - self.begun
        head = f"{self.label}: {_count(self.done)}/{_count(self.total)}"
        if self.total:
            head += f" ({100 * self.done / self.total:.0f}%)"
        parts = [head, f"{_clock(elapsed)} elapsed"]
        if finished:
            parts.append("done")
        elif 0 < self.done < self.total:
            parts.append(f"about {_clock(elapsed * (self.total - self.done) / self.done)} left")
        if self.metric and self.value is not None:
            parts.append(f"{self.metric} {self.value:.4f}")
        print(", ".join(parts), file=self.stream, flush=True)
        self.lines += 1


def _count(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"
