"""Charts saved as PNG files: training curves, PPO progress, run comparisons.

Figures are drawn on matplotlib's object API (``matplotlib.figure.Figure``), not ``pyplot``: no
display is needed, no global backend is switched, and nothing stays open in a process that draws
many charts. matplotlib loads on the first chart, so runs that draw none never pay for it.

Example:
    >>> with saved_figure(Path("loss.png"), figsize=(7, 4)) as (fig, ax):
    ...     _ = ax.plot([1, 2, 3], [2.5, 1.9, 1.4])
    >>> Path("loss.png").read_bytes()[:4]
    b'\x89PNG'
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hearthlm.files import atomic_file

__all__ = ["saved_figure"]


@contextmanager
def saved_figure(
    path: Path, nrows: int = 1, ncols: int = 1, *, dpi: int = 110, **options: Any
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(figure, axes)`` for ``nrows`` x ``ncols`` panels (``axes`` as
    ``Figure.subplots`` returns them; ``options`` such as ``figsize`` and ``sharex`` go to the
    figure and its subplots). When the block ends without an error the figure is laid out tightly
    and saved to ``path`` (its folder created) at ``dpi``; on an error nothing is written."""
    from matplotlib.figure import Figure  # lazy: about 1 s, paid only by runs that draw

    figsize = options.pop("figsize", None)
    figure = Figure(figsize=figsize)
    axes = figure.subplots(nrows, ncols, **options)
    yield figure, axes
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as staging:  # a reader never sees half a PNG
        figure.savefig(staging, dpi=dpi, format=path.suffix.lstrip(".") or "png")
