"""Progress in a log: a line now and then, nothing for an instant job, no finished bar repeated."""

from __future__ import annotations

import io
import time

from hearthlm.progress import progress_bar


def test_a_log_gets_plain_lines_and_one_closing_line():
    log = io.StringIO()
    with progress_bar(True, 4, "files", stream=log, interval=0.01, metric="loss") as advance:
        for step in range(4):
            time.sleep(0.02)
            advance(1, value=1.0 / (step + 1))
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("files: 1/4 (25%), 0:00 elapsed, about 0:00 left, loss 1.0000")
    assert lines[-1].startswith("files: 4/4 (100%), 0:00 elapsed, done")
    assert sum("done" in line for line in lines) == 1
    assert len(lines) == 4  # three while running, one at the end
    assert "━" not in log.getvalue()


def test_an_instant_job_writes_nothing_to_a_log():
    log = io.StringIO()
    for _ in range(19):  # an evaluation opening its up-to-date index 19 times
        with progress_bar(True, 1, "files", stream=log) as advance:
            advance()
    assert log.getvalue() == ""


def test_disabled_progress_writes_nothing(capfd):
    with progress_bar(False, 10, "files") as advance:
        for _ in range(10):
            advance()
    captured = capfd.readouterr()
    assert captured.out == captured.err == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_keeps_only_the_bars_of_jobs_over_a_second():
    instant, slow = _Terminal(), _Terminal()
    with progress_bar(True, 2, "files", stream=instant) as advance:
        advance(2)
    with progress_bar(True, 2, "files", stream=slow) as advance:
        time.sleep(1.1)
        advance(2)
    # What stays on screen is what follows the last carriage return.
    assert "100%" not in instant.getvalue().rsplit("\r", 1)[-1]  # erased
    assert "100%" in slow.getvalue().rsplit("\r", 1)[-1]
