"""The embedder on OpenVINO: the same vectors as PyTorch, converted once, kept apart in a
collection's state."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from retrieval_helpers import write_corpus

from hearthlm.config import RetrievalConfig
from hearthlm.errors import ConfigError, RetrievalError
from hearthlm.retrieval import DocumentIndex, HearthEmbeddings, HybridRetriever
from hearthlm.retrieval.embeddings import packaged_embedder_path

TEXTS = [
    "Returns are accepted within 30 days of purchase with a receipt.",
    "The kettle boils water in three minutes.",
    "Flat tyre repairs cost twelve euros at the Main Street shop.",
    "ok",
    "A much longer passage " * 80,  # past the 256-token limit: truncated as PyTorch does
]


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh user cache, so the conversion itself runs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "hearthlm" / "models" / "embedders"


def test_openvino_vectors_equal_pytorch_ones_and_convert_once(own_cache, capsys):
    fast = HearthEmbeddings(backend="openvino")
    vectors = fast.encode(TEXTS)
    torch_float32 = HearthEmbeddings(precision="float32")
    reference = torch_float32.encode(TEXTS)
    assert vectors.shape == reference.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(np.min(np.sum(vectors * reference, axis=1))) > 0.999
    assert fast.embed_query(TEXTS[0]) == pytest.approx(vectors[0].tolist(), abs=1e-5)
    assert fast.encode([]).shape == (0, 384)
    shown = HearthEmbeddings(backend="openvino", show_progress=True).encode(TEXTS[:2])
    assert np.allclose(shown, vectors[:2], atol=1e-5)
    assert "Embedding: 100%" in capsys.readouterr().err  # the bar, as PyTorch's path shows one
    (converted,) = _converted(own_cache)
    made = (converted / "model.xml").stat().st_mtime_ns
    again = HearthEmbeddings(backend="openvino").encode(TEXTS[:2])  # reads the cached copy
    assert np.allclose(again, vectors[:2], atol=1e-5)
    assert _converted(own_cache) == [converted]
    assert (converted / "model.xml").stat().st_mtime_ns == made
    assert fast.name == "all-MiniLM-L6-v2+openvino" != torch_float32.name


def _converted(cache: Path) -> list[Path]:
    return [p for p in cache.iterdir() if not p.name.startswith(".")]  # not the lock files


def test_a_collection_keeps_the_backend_it_was_indexed_with(own_cache, embeddings, tmp_path):
    corpus = write_corpus(tmp_path / "docs")
    config = RetrievalConfig(path=tmp_path / "index", collection="fast", embed_backend="openvino")
    index = DocumentIndex(config)
    assert index.index_path(corpus, progress=False).files_indexed == 5
    hits = HybridRetriever.from_index(index, mode="dense", k=1).search("flat tyre repair price")
    assert hits[0].metadata["source"].endswith("page.html")
    mixed = config.model_copy(update={"embed_backend": "torch"})
    with pytest.raises(RetrievalError, match=r"all-MiniLM-L6-v2\+openvino"):
        DocumentIndex(mixed, embeddings)


def test_openvino_refuses_settings_it_cannot_honour(tmp_path, own_cache):
    with pytest.raises(ConfigError, match="float32 on the CPU"):
        HearthEmbeddings(backend="openvino", precision="int8")
    with pytest.raises(ConfigError, match="float32 on the CPU"):
        HearthEmbeddings(backend="openvino", device="cuda")
    cls_pooled = tmp_path / "cls-model"  # the packaged model, pooled by its first token
    shutil.copytree(packaged_embedder_path(), cls_pooled)
    pooling = cls_pooled / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text(encoding="utf-8"))
    config.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
    pooling.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ConfigError, match="mean-pooling"):
        HearthEmbeddings(cls_pooled, backend="openvino").embed_query("hello")
    assert not own_cache.exists()  # refused before converting anything
