"""The shared jobs of run folders: atomic writes, claiming a folder, torn logs, charts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hearthlm.errors import EvalError
from hearthlm.files import atomic_file, atomic_folder, old_folder, write_atomic
from hearthlm.plots import saved_figure
from hearthlm.runs import append_jsonl, claim_run, fingerprint, read_jsonl


def test_atomic_folder_replaces_the_target_whole_or_not_at_all(tmp_path: Path):
    target = tmp_path / "checkpoint"
    with atomic_folder(target) as staging:
        (staging / "state.json").write_text("1")
    assert (target / "state.json").read_text() == "1"

    with pytest.raises(RuntimeError), atomic_folder(target) as staging:
        (staging / "state.json").write_text("2")
        raise RuntimeError("killed while writing")
    assert (target / "state.json").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]

    with atomic_folder(target) as staging:
        (staging / "state.json").write_text("3")
    assert (target / "state.json").read_text() == "3"
    assert not old_folder(target).exists()


def test_atomic_folder_unique_staging_leaves_no_litter(tmp_path: Path):
    target = tmp_path / "cache" / "model"
    for version in ("a", "b"):
        with atomic_folder(target, unique=True) as staging:
            assert staging.parent == target.parent and staging.name.startswith(".model.")
            (staging / "config.json").write_text(version)
    assert (target / "config.json").read_text() == "b"
    assert [p.name for p in target.parent.iterdir()] == ["model"]


def test_atomic_file_keeps_the_old_content_on_error(tmp_path: Path):
    target = tmp_path / "results.json"
    write_atomic(target, "old")
    with pytest.raises(ValueError), atomic_file(target) as staging:
        staging.write_text("half")
        raise ValueError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_claim_run_resumes_the_same_run_and_refuses_another(tmp_path: Path):
    out = tmp_path / "run"
    digest = claim_run(out, {"task": "quiz", "shots": 2}, EvalError("taken"))
    assert digest == fingerprint({"shots": 2, "task": "quiz"})  # key order does not matter
    marker = json.loads((out / "run.json").read_text())
    assert marker == {"fingerprint": digest, "settings": {"task": "quiz", "shots": 2}}
    assert claim_run(out, {"shots": 2, "task": "quiz"}, EvalError("taken")) == digest
    with pytest.raises(EvalError, match="taken"):
        claim_run(out, {"task": "quiz", "shots": 3}, EvalError("taken"))
    assert json.loads((out / "run.json").read_text()) == marker


def test_read_jsonl_drops_a_torn_last_line_so_appends_start_clean(tmp_path: Path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert read_jsonl(log) == [{"step": 1}, {"step": 2}]
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    append_jsonl(log, [{"step": 3}])
    assert [r["step"] for r in read_jsonl(log)] == [1, 2, 3]


def test_append_jsonl_writes_each_record_on_its_line_and_syncs_it(tmp_path: Path, monkeypatch):
    # Fine-tuning, PPO and evaluation all log through it: a record a run was told is written
    # must survive a power cut, so every append reaches the disk before it returns.
    synced = []
    monkeypatch.setattr("hearthlm.runs.os.fsync", synced.append)
    log = tmp_path / "items.jsonl"
    append_jsonl(log, [{"id": "q1", "answer": "café"}, {"id": "q2", "answer": "naïve"}])
    append_jsonl(log, [])
    append_jsonl(log, [{"id": "q3", "answer": "日本"}])
    assert log.read_text(encoding="utf-8").splitlines()[0] == '{"id": "q1", "answer": "café"}'
    assert [r["id"] for r in read_jsonl(log)] == ["q1", "q2", "q3"]
    assert len(synced) == 3


def test_read_jsonl_cuts_back_to_the_kept_records(tmp_path: Path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 6)))
    assert read_jsonl(log, keep=lambda r: r["step"] <= 3) == [{"step": s} for s in (1, 2, 3)]
    assert len(log.read_text().splitlines()) == 3
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_saved_figure_writes_a_png_and_nothing_on_error(tmp_path: Path):
    chart = tmp_path / "charts" / "loss.png"
    with saved_figure(chart, 2, 1, figsize=(4, 3), sharex=True) as (_, (top, bottom)):
        top.plot([1, 2, 3], [3, 2, 1])
        bottom.plot([1, 2, 3], [1, 2, 3])
    assert chart.read_bytes().startswith(b"\x89PNG")
    broken = tmp_path / "broken.png"
    with pytest.raises(KeyError), saved_figure(broken) as (_, ax):
        ax.plot([1], [1])
        raise KeyError("missing series")
    assert not broken.exists()
