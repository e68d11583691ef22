"""Real documents in real formats, written by the tests."""

from __future__ import annotations

from pathlib import Path

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
