"""Merge an adapter into a full model folder, and export a merged GGUF for the llama.cpp backend.

The GGUF is written with the `gguf` package: metadata (tokenizer, chat template, hyperparameters)
is copied from the base GGUF, and the merged weights are mapped to llama.cpp's tensor names, with
the query/key row order llama.cpp expects for Llama-family models. :func:`agreement` then compares
greedy replies of the export (llama.cpp) and the adapted model (transformers) on a few prompts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from hearthlm.config import LLMConfig
from hearthlm.errors import TrainingError
from hearthlm.files import atomic_file, atomic_folder
from hearthlm.llm.chat_model import ChatHearth
from hearthlm.llm.hf_backend import TransformersBackend
from hearthlm.llm.sources import resolve_adapter, resolve_model

GGUFType = Literal["f16", "q8_0"]
DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "Count from 1 to 10.",
    "Write one sentence about the sea.",
)
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def load_adapted(trained: Path, llm: LLMConfig) -> Any:
    """The transformers backend with ``trained`` applied: a fine-tuning output folder, an adapter
    folder, or a full model folder. LoRA and (IA)³ are merged into the weights on load."""
    if (trained / "model" / "config.json").is_file():
        trained = trained / "model"
    base = llm.model_copy(update={"backend": "transformers", "dtype": "float32"})
    if (trained / "config.json").is_file():
        return TransformersBackend.load(base.model_copy(update={"model": str(trained)}))
    adapter = resolve_adapter(trained)
    backend = TransformersBackend.load(base.model_copy(update={"adapter": adapter}))
    if backend.soft_prompt is not None or _has_bottleneck(backend.model):
        raise TrainingError(
            f"{trained} is a prompt-tuning or bottleneck adapter, which cannot be merged into "
            "the weights; use it with --adapter on the transformers backend instead."
        )
    return backend


def _has_bottleneck(model: Any) -> bool:
    return hasattr(model, "hearth_adapters")


def merge(trained: Path, out: Path, llm: LLMConfig | None = None) -> Path:
    """A full transformers model folder (weights, tokenizer, chat template) with the adapter
    merged in; load it with ``--model OUT``."""
    backend = load_adapted(trained, llm or LLMConfig())
    with atomic_folder(out) as staging:
        backend.model.save_pretrained(staging, safe_serialization=True)
        backend.tokenizer.save_pretrained(staging)
    return out


def export_gguf(
    trained: Path,
    out: Path,
    *,
    gguf_type: GGUFType = "f16",
    llm: LLMConfig | None = None,
) -> Path:
    """A merged GGUF (``f16`` or ``q8_0``) that the llama.cpp backend runs."""
    import gguf

    llm = llm or LLMConfig()
    base = resolve_model(llm.model)
    if not base.is_gguf:
        raise TrainingError(
            "GGUF export copies the tokenizer and hyperparameters from the base GGUF; "
            f"the base model {base.path} is not a GGUF."
        )
    backend = load_adapted(trained, llm)
    reader = gguf.GGUFReader(str(base.path))
    arch = str(reader.fields["general.architecture"].contents())
    if arch != "llama":
        raise TrainingError(f"GGUF export supports Llama-family models; {base.path} is {arch!r}")
    with atomic_file(out) as staging:
        _write_gguf(staging, reader, arch, backend.model, gguf_type)
    return out


def _write_gguf(path: Path, reader: Any, arch: str, model: Any, gguf_type: GGUFType) -> None:
    """The merged weights of ``model`` as a GGUF at ``path``, with the base GGUF's metadata."""
    import gguf
    import numpy as np

    config = model.config
    qtype = gguf.GGMLQuantizationType.F16 if gguf_type == "f16" else gguf.GGMLQuantizationType.Q8_0
    writer = gguf.GGUFWriter(str(path), arch)
    _copy_metadata(reader, writer, file_type=1 if gguf_type == "f16" else 7)
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    for name, value in state.items():
        target = _gguf_name(name)
        if target is None:
            continue
        if name.endswith("q_proj.weight"):
            value = _permute(value, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            value = _permute(value, config.num_key_value_heads)
        if value.ndim == 1:
            writer.add_tensor(target, value.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(target, value.astype(np.float16))
        else:
            data = gguf.quants.quantize(value.astype(np.float32), qtype)
            writer.add_tensor(target, data, raw_dtype=qtype)
    if "lm_head.weight" in state and not config.tie_word_embeddings:
        writer.add_tensor("output.weight", state["lm_head.weight"].astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()


def _copy_metadata(reader: Any, writer: Any, file_type: int) -> None:
    import gguf

    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        types = field.types
        value = field.contents()
        if types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, types[0], sub_type=types[-1])
        else:
            writer.add_key_value(key, value, types[0])
    writer.add_file_type(file_type)


def _gguf_name(name: str) -> str | None:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    match = _LAYER.match(name)
    if match and match.group(2) in _NAMES:
        return f"blk.{match.group(1)}.{_NAMES[match.group(2)]}"
    return None


def _permute(weight: Any, heads: int) -> Any:
    """llama.cpp's rotary layout for Llama query/key rows (its converter's ``permute``)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def agreement(
    gguf_path: Path,
    trained: Path,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    max_new_tokens: int = 24,
    llm: LLMConfig | None = None,
) -> dict[str, Any]:
    """Greedy replies of the export on llama.cpp against the adapted model on transformers."""
    llm = llm or LLMConfig()
    exported = ChatHearth(backend="llamacpp", model=str(gguf_path), max_new_tokens=max_new_tokens)
    engine: TransformersBackend = load_adapted(trained, llm)
    adapted = ChatHearth.from_backend(engine, max_new_tokens=max_new_tokens)
    rows: list[dict[str, Any]] = []
    for prompt in prompts:
        a = exported.invoke([("human", prompt)])
        b = adapted.invoke([("human", prompt)])
        ta, tb = engine.tokenize(str(a.content)), engine.tokenize(str(b.content))
        same = 0
        while same < min(len(ta), len(tb)) and ta[same] == tb[same]:
            same += 1
        rows.append(
            {
                "prompt": prompt,
                "gguf": a.content,
                "transformers": b.content,
                "identical": a.content == b.content,
                "common_prefix_tokens": same,
            }
        )
    return {
        "prompts": len(rows),
        "identical": sum(r["identical"] for r in rows),
        "mean_common_prefix_tokens": sum(r["common_prefix_tokens"] for r in rows) / len(rows),
        "rows": rows,
    }
