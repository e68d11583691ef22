"""Model sources: the packaged GGUF, an explicit GGUF file, a Hugging Face folder, PEFT adapters."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearthlm.llm import ChatHearth, packaged_model_path

QUESTION = "Name three primary colors."


def _converted_folder(hf_cache: Path) -> Path:
    (folder,) = (p.parent for p in hf_cache.glob("models/*/model.safetensors"))
    return folder


def test_explicit_gguf_file_equals_the_default(llama_chat):
    explicit = ChatHearth(model=str(packaged_model_path()), max_new_tokens=48)
    assert explicit.invoke(QUESTION).content == llama_chat.invoke(QUESTION).content


def test_hugging_face_folder_as_model(hf_chat, hf_cache):
    folder = _converted_folder(hf_cache)
    chat = ChatHearth(backend="transformers", model=str(folder), max_new_tokens=48)
    assert chat.invoke(QUESTION).content == hf_chat.invoke(QUESTION).content
    assert chat.invoke(QUESTION).response_metadata["model_name"] == folder.name


@pytest.fixture(scope="module")
def adapters(hf_chat, hf_cache, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LoRA and a prompt-tuning adapter, saved in PEFT format with non-trivial weights."""
    import torch
    from peft import LoraConfig, PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = _converted_folder(hf_cache)
    out = tmp_path_factory.mktemp("adapters")
    torch.manual_seed(0)
    configs = {
        "lora": LoraConfig(
            r=4,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
            task_type=TaskType.CAUSAL_LM,
        ),
        "prompt": PromptTuningConfig(num_virtual_tokens=4, task_type=TaskType.CAUSAL_LM),
    }
    paths = {}
    for name, config in configs.items():
        base = AutoModelForCausalLM.from_pretrained(folder)
        model = get_peft_model(base, config)
        if name == "lora":  # make the update large enough to change greedy output
            for param_name, param in model.named_parameters():
                if "lora_B" in param_name:
                    param.data.normal_(0, 0.5)
        model.save_pretrained(out / name)
        paths[name] = out / name
    return paths


@pytest.mark.parametrize("kind", ["lora", "prompt"])
def test_peft_adapter_changes_the_model(adapters, hf_chat, hf_cache, kind):
    adapted = ChatHearth(
        backend="transformers", adapter=adapters[kind], cache_dir=hf_cache, max_new_tokens=24
    )
    reply = adapted.invoke(QUESTION)
    assert reply.response_metadata["model_name"] == f"SmolLM2-135M-Instruct+{kind}"
    assert reply.content != hf_chat.invoke(QUESTION, max_new_tokens=24).content
    assert "".join(c.content for c in adapted.stream(QUESTION)) == reply.content
