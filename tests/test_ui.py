"""The web chat in a real browser: Playwright drives Debian's headless Chromium against a real
server. It uploads by drag and drop, waits for indexing, asks, opens a citation's passage, and
stops a long reply, and no request leaves the machine."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow
DOCS = Path(__file__).resolve().parent.parent / "examples" / "docs"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture()
def page(tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: `make test` installs Debian's package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        yield page
        browser.close()


def test_upload_ask_cite_and_stop_in_the_browser(server, page, tmp_path):
    from conftest import Served, free_port, serve_config

    from hearthlm.llm import ChatHearth
    from hearthlm.serve import create_app

    chat = ChatHearth.from_backend(server.state.models.base.engine)
    with Served(create_app(serve_config(tmp_path), chat=chat), free_port(), tmp_path) as ui:
        outside: list[str] = []

        def only_here(route) -> None:
            if route.request.url.startswith(ui.url):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", only_here)
        page.goto(ui.url)
        page.wait_for_function("document.getElementById('model').textContent.length > 0")
        page.fill("#new-collection", "kettle")
        files = {
            n: (DOCS / n).read_text(encoding="utf-8")
            for n in ("warranty.html", "troubleshooting.txt")
        }
        page.evaluate(
            """(files) => {
                const data = new DataTransfer();
                for (const [name, text] of Object.entries(files)) {
                    data.items.add(new File([text], name));
                }
                document.getElementById("drop").dispatchEvent(
                    new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
            }""",
            files,
        )
        page.wait_for_function(
            "[...document.querySelectorAll('#files li')]"
            ".filter(li => /\\d+ chunks?/.test(li.textContent)).length === 2",
            timeout=120_000,
        )
        assert page.locator("#collection").input_value() == "kettle"
        page.fill("#question", "How long is the warranty?")
        page.press("#question", "Enter")
        citation = page.locator(".message.assistant .citation").first
        citation.wait_for(timeout=120_000)
        assert (
            "two-year limited warranty"
            in page.locator(".message.assistant .text").first.inner_text()
        )
        assert citation.inner_text().startswith("[1] warranty.html")
        citation.click()
        page.locator("#source").wait_for(state="visible")
        marked = page.locator("#source-text mark").inner_text()
        quote = "Every Emberline K2 kettle comes with a two-year limited warranty"
        assert marked == f"{quote} from the date of purchase."
        assert "warranty.html, characters 21-112" in page.locator("#source-where").inner_text()
        page.screenshot(path=str(tmp_path / "cited-answer.png"))

        page.click("#mode-chat")
        page.fill("#question", "Tell me a very long story about a dragon and a knight.")
        # every length the reply's text takes on screen, to see it come in pieces
        page.evaluate(
            """() => {
                window.lengths = [];
                new MutationObserver(() => {
                    const text = [...document.querySelectorAll('.message.assistant .text')].pop();
                    window.lengths.push(text ? text.textContent.length : 0);
                }).observe(document.getElementById('messages'),
                           {subtree: true, childList: true, characterData: true});
            }"""
        )
        page.press("#question", "Enter")
        reply = page.locator(".message.assistant .text").last
        page.wait_for_function(
            "() => [...document.querySelectorAll('.message.assistant .text')]"
            ".pop().textContent.length > 40",
            timeout=60_000,
        )
        stats = lambda: httpx.get(f"{ui.url}/v1/server").json()["engine"]  # noqa: E731
        at_stop = stats()["generated_tokens"]  # read before the click: every later token counts
        page.click("#stop")
        page.locator(".message.assistant.stopped").wait_for(timeout=10_000)
        shown = reply.inner_text()
        time.sleep(1.5)
        lengths = page.evaluate("window.lengths")
        assert len({n for n in lengths if n > 0}) >= 5  # streamed: the text grew piece by piece
        assert reply.inner_text() == shown  # the page stopped
        # so did the server: within a few tokens of the click (the abort takes a round trip
        # while the scheduler decodes on, about 25 tokens a second on a busy 2-core machine)
        assert stats()["generated_tokens"] - at_stop <= 12 and stats()["running"] == 0
        assert page.locator("#send").is_visible() and not page.locator("#stop").is_visible()
        page.screenshot(path=str(tmp_path / "stopped.png"))
    assert outside == []  # nothing from a CDN or any other host
    assert (tmp_path / "cited-answer.png").stat().st_size > 10_000
    print(f"screenshots: {tmp_path / 'cited-answer.png'}, {tmp_path / 'stopped.png'}")
