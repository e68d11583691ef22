"""One progress bar for long jobs (evaluation, training, PPO): a rich bar, or nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(
    enabled: bool, total: float, label: str, *, completed: int = 0, metric: str | None = None
) -> Iterator[Callable[..., None]]:
    """Yields ``advance(n=1, value=None)``; ``value`` is shown beside the bar as ``metric``."""
    if not enabled:
        yield lambda n=1, value=None: None
        return
    from rich.progress import Progress, TextColumn

    columns = [*Progress.get_default_columns()]
    if metric:
        columns.append(TextColumn(f"{metric} {{task.fields[value]}}"))
    with Progress(*columns) as progress:
        task = progress.add_task(label, total=total, completed=completed, value="-")

        def advance(n: float = 1, value: float | None = None) -> None:
            shown = f"{value:.4f}" if value is not None else "-"
            progress.update(task, advance=n, value=shown)

        yield advance
