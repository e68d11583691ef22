"""Real documents in real formats, written by the tests."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

HEARTH = str(Path(sys.executable).with_name("hearth"))

TOPICS = {
    "volcanoes": "Volcanoes form where magma reaches the surface. Basalt lava flows are runny.",
    "bees": "Honey bees communicate the direction of flowers with a waggle dance in the hive.",
    "tides": "Ocean tides are caused by the gravitational pull of the moon and the sun.",
}


def write_pdf(path: Path, pages: list[str]) -> Path:
    """A real multi-page PDF, one paragraph per page."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    pdf.output(str(path))
    return path


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "guide.md").write_text(
        "# Garden guide\n\nIntro text about gardens.\n\n## Roses\n\nRoses need six hours of sun "
        "and deep watering once a week.\n\n### Pruning\n\nPrune roses in late winter, cutting "
        "above an outward-facing bud.\n\n## Tomatoes\n\nTomatoes need support stakes and "
        "regular feeding with potassium.\n",
        encoding="utf-8",
    )
    (folder / "notes.txt").write_text(
        "The office wifi password is rotated every ninety days by the IT team.\n\n"
        "Expense reports are due on the fifth working day of each month.\n",
        encoding="utf-8",
    )
    (folder / "page.html").write_text(
        "<html><head><title>Bike shop</title><script>var x = 'tracking';</script></head><body>"
        "<nav>Home | Shop | Cart</nav><main><h1>Repairs</h1><p>A flat tyre repair costs twelve "
        "euros and takes twenty minutes.</p></main><footer>Copyright bike shop</footer>"
        "</body></html>",
        encoding="utf-8",
    )
    (folder / "records.jsonl").write_text(
        '{"id": "a1", "text": "Saturn has the most moons of any planet in the solar system."}\n'
        '{"id": "a2", "text": "The Great Red Spot is a storm on Jupiter larger than Earth."}\n',
        encoding="utf-8",
    )
    write_pdf(folder / "science.pdf", list(TOPICS.values()))
    return folder


def index_env(index_dir: Path) -> dict[str, str]:
    """The environment of a ``hearth index`` process writing into ``index_dir``, in small
    batches so that a kill lands between them."""
    return {
        **os.environ,
        "HEARTH_RETRIEVAL__PATH": str(index_dir),
        "HEARTH_RETRIEVAL__WRITE_BATCH": "16",
        "HF_HUB_OFFLINE": "1",
    }


def kill_after_files(index_dir: Path, corpus: Path, *flags: str, files: int = 3) -> None:
    """Run ``hearth index corpus *flags`` and SIGKILL it (with its process group: a local Ray
    it started) once ``files`` files are recorded in its manifest."""
    index_dir.mkdir(parents=True, exist_ok=True)
    log = index_dir.parent / f"{index_dir.name}-killed.log"
    with log.open("wb") as errors:  # a file, not a pipe that nobody reads and that fills up
        proc = subprocess.Popen(
            [HEARTH, "index", str(corpus), *flags, "--json"],
            env=index_env(index_dir),
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
        )
    manifest = index_dir / "hearth.sqlite"
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and proc.poll() is None and done < files:
        if manifest.exists():
            try:
                with sqlite3.connect(manifest) as db:
                    done = db.execute("SELECT COUNT(*) FROM files").fetchone()[0]
            except sqlite3.OperationalError:
                done = 0
        time.sleep(0.05)
    alive = proc.poll() is None
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
    assert alive, f"indexing ended before it could be killed:\n{tail}"
    assert done >= files, f"no {files} files were indexed in 300 s:\n{tail}"
