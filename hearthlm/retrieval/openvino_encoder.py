"""The embedder on OpenVINO: the same sentence-transformers model, compiled for the CPU.

sentence-transformers' own OpenVINO and ONNX backends export through optimum, which pins
transformers below 4.58; hearthlm runs transformers 5. So the model's transformer is converted
here with ``openvino.convert_model`` straight from its PyTorch weights (nothing downloaded), once,
into the user cache (``models/embedders/<key>/model.xml``), under a file lock so that concurrent
indexers convert it once. Pooling and normalisation run in NumPy, as the model's own modules
define them: mean pooling over the attention mask, then L2 normalisation.

On the 2-core machine of the benchmarks (a Xeon with AMX) it encodes SciFact abstracts 3.4x as
fast as PyTorch float32, as fast as PyTorch bfloat16, with vectors at cosine 0.9999 of float32
PyTorch's (bfloat16: 0.996) and the same nDCG@10 (``benchmarks/bench_index.py --embedder``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hearthlm.errors import ConfigError, ModelLoadError
from hearthlm.files import atomic_folder, made_once
from hearthlm.llm.sources import conversion_key, default_cache_dir

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OpenVINOEncoder:
    """``encode`` of a loaded ``SentenceTransformer`` (its tokenizer, its limit) on OpenVINO.

    Raises:
        ModelLoadError: ``openvino`` is not installed, or the model cannot be converted.
        ConfigError: The model pools other than by the mean of its tokens.
    """

    def __init__(self, model: Any, source: Path, precision: str = "auto") -> None:
        try:
            import openvino
        except ImportError as exc:
            raise ModelLoadError(
                "retrieval.embed_backend = 'openvino' needs the openvino package: "
                "pip install 'hearthlm[openvino]'"
            ) from exc
        _check_pooling(model)
        self.tokenizer = model.tokenizer
        self.max_length = int(model.max_seq_length)
        self.inputs = [n for n in INPUTS if n in self.tokenizer.model_input_names]
        xml = _converted(model, source, self.inputs, openvino.__version__)
        # "auto" lets OpenVINO use bfloat16 matmuls where the CPU has them (AMX, AVX512-BF16):
        # on such a CPU its vectors still match PyTorch float32 to a cosine of 0.9999
        config = {"INFERENCE_PRECISION_HINT": "f32"} if precision == "float32" else {}
        self.compiled = openvino.Core().compile_model(str(xml), "CPU", config)
        self.dim = self.compiled.output(0).get_partial_shape()[2].get_length()

    def encode(self, texts: list[str], batch_size: int, progress: Any = None) -> np.ndarray:
        """Normalised float32 vectors, (len(texts), dim), batched longest first (little
        padding per batch), in the order of ``texts``."""
        order = np.argsort([-len(t) for t in texts], kind="stable")
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for rows, pooled in self._batches(texts, order, batch_size):
            vectors[rows] = pooled
            if progress is not None:
                progress(len(rows))
        return vectors

    def _batches(
        self, texts: list[str], order: np.ndarray, size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        request = self.compiled.create_infer_request()  # one per call: calls may overlap
        for start in range(0, len(texts), size):
            rows = order[start : start + size]
            batch = self.tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="np",
            )
            feed = {name: batch[name].astype(np.int64) for name in self.inputs}
            hidden = next(iter(request.infer(feed).values()))  # (batch, tokens, dim)
            mask = batch["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            yield rows, pooled


def _check_pooling(model: Any) -> None:
    """Refuse a model whose modules are not a transformer, mean pooling and (optionally)
    normalisation: the pooling here is written for that shape only."""
    names = [type(m).__name__ for m in model]
    mode = model[1].get_config_dict().get("pooling_mode") if names[1:2] == ["Pooling"] else None
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]) or (
        mode != "mean"
    ):
        raise ConfigError(
            f"the openvino embedder runs mean-pooling sentence-transformers models; this one "
            f"is {' + '.join(names)} (pooling {mode!r}). Set retrieval.embed_backend = 'torch'."
        )


def _converted(model: Any, source: Path, inputs: list[str], version: str) -> Path:
    """The cached OpenVINO IR of ``model``'s transformer, converting it on first use."""
    weights = _weights_file(source)
    folder = default_cache_dir() / "models" / "embedders" / _key(conversion_key(weights), version)
    made = made_once(
        folder,
        lambda f: (f / "model.xml").is_file(),
        lambda f: _convert(model, f, inputs, source),
    )
    return made / "model.xml"


def _key(weights_key: str, version: str) -> str:
    return f"{weights_key}-ov{version.split('-')[0]}"


def _weights_file(source: Path) -> Path:
    """The model's weights file (a changed file makes a new conversion)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (source / name).is_file():
            return source / name
    return source / "config.json"


def _convert(model: Any, folder: Path, inputs: list[str], source: Path) -> None:
    import openvino
    import torch

    log.info("converting the embedder %s to OpenVINO in %s (once)", source, folder)
    transformer = model[0].auto_model.float().eval()

    class Hidden(torch.nn.Module):  # the token states, from named inputs only
        def __init__(self) -> None:
            super().__init__()
            self.inner = transformer

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(inputs, tensors, strict=True))).last_hidden_state

    sample = model.tokenizer(["a sentence", "and a longer one of more words"], padding=True,
                             return_tensors="pt")  # fmt: skip
    example = tuple(sample[name] for name in inputs)
    try:
        with torch.no_grad():
            converted = openvino.convert_model(Hidden(), example_input=example)
        for port, name in zip(converted.inputs, inputs, strict=True):
            port.get_tensor().set_names({name})
        converted.reshape({name: openvino.PartialShape([-1, -1]) for name in inputs})
    except Exception as exc:  # openvino's frontends raise their own types
        raise ModelLoadError(f"OpenVINO could not convert the embedder {source}: {exc}") from exc
    with atomic_folder(folder, unique=True) as staging:
        openvino.save_model(converted, str(staging / "model.xml"), compress_to_fp16=False)
        (staging / "hearthlm_source.json").write_text(
            json.dumps({"embedder": str(source), "inputs": inputs}), encoding="utf-8"
        )
