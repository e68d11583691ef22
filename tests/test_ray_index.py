"""Indexing on Ray Data, on a real local Ray with 2 CPUs: the same chunks as indexing in one
process, vectors of the same embedder, nothing re-embedded on a re-run, and a killed driver's
run completed by the next one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import ray
from retrieval_helpers import HEARTH, index_env, kill_after_files, write_corpus

from hearthlm.config import RetrievalConfig
from hearthlm.retrieval import DocumentIndex, HybridRetriever

pytestmark = pytest.mark.slow  # a local Ray, `hearth index` processes


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _vectors(index: DocumentIndex) -> dict[str, np.ndarray]:
    got = index.collection.get(include=["embeddings"])
    return {i: np.asarray(v) for i, v in zip(got["ids"], got["embeddings"], strict=True)}


def _folder(root: Path, count: int) -> Path:
    root.mkdir(parents=True)
    for i in range(count):
        body = "\n\n".join(
            f"Report {i} section {j} lists part {i * 100 + j}, its supplier, its price and the "
            f"date it was last ordered, {j + 1} weeks ago."
            for j in range(12)
        )
        (root / f"report{i:02}.txt").write_text(body, encoding="utf-8")
    return root


def test_ray_indexes_the_same_chunks_as_one_process(local_ray, tmp_path: Path):
    corpus = write_corpus(tmp_path / "docs")
    _folder(corpus / "reports", 10)
    # float32 on both sides: bfloat16 vectors differ with the batch they were embedded in
    config = RetrievalConfig(path=tmp_path / "alone", embed_precision="float32")
    alone = DocumentIndex(config)
    alone.index_path(corpus, progress=False)
    on_ray = DocumentIndex(config.model_copy(update={"path": tmp_path / "ray"}), alone.embeddings)
    report = on_ray.index_path(corpus, progress=False, ray=True)

    assert report.files_indexed == 15 and report.skipped == []
    expected, got = _vectors(alone), _vectors(on_ray)
    assert set(got) == set(expected) == on_ray.store.chunk_ids()
    assert report.embedded == len(got) > 15
    cosines = [float(expected[i] @ got[i]) for i in expected]
    assert min(cosines) >= 0.999
    assert on_ray.store.files() == alone.store.files()
    hits = HybridRetriever.from_index(on_ray, k=1).search("flat tyre repair price")
    assert hits[0].metadata["source"].endswith("page.html")

    again = on_ray.index_path(corpus, progress=False, ray=True)
    assert (again.embedded, again.chunks_added, again.files_unchanged) == (0, 0, 15)


def test_a_killed_ray_driver_is_completed_by_the_next_run(embeddings, tmp_path: Path):
    corpus = _folder(tmp_path / "reports", 30)
    index_dir = tmp_path / "idx"
    kill_after_files(index_dir, corpus, "--ray")

    config = RetrievalConfig(path=index_dir)
    resumed = DocumentIndex(config, embeddings)
    before = resumed.count
    assert before > 0
    completed = subprocess.run(
        [HEARTH, "index", str(corpus), "--ray", "--json"],
        env=index_env(index_dir),
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout)
    assert report["embedded"] <= resumed.count - before + 16  # at most one wave redone
    ids = resumed.collection.get(include=[])["ids"]
    reference = DocumentIndex(config.model_copy(update={"collection": "reference"}), embeddings)
    reference.index_path(corpus, progress=False)
    assert len(ids) == len(set(ids)) == resumed.store.count()
    assert set(ids) == set(reference.collection.get(include=[])["ids"])
    assert resumed.index_path(corpus, progress=False).embedded == 0
