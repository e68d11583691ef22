"""The transformers backend: training, evaluation and PEFT adapters run on these weights.

The packaged GGUF is dequantized by transformers once and cached as safetensors under the user
cache folder, so later loads take about a second. Heavy imports happen inside methods, so listing
backends stays cheap.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import warnings
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hearthlm.config import LLMConfig, SamplingConfig
from hearthlm.errors import ModelLoadError
from hearthlm.files import atomic_folder, made_once
from hearthlm.llm.adapters import is_bottleneck_folder, load_bottleneck_adapters
from hearthlm.llm.backend import TEXT_REPLY, Backend, Constraint, GrammarCache, Scored
from hearthlm.llm.grammar import json_schema_gbnf
from hearthlm.llm.scoring import scored_token
from hearthlm.llm.sources import (
    ModelSource,
    conversion_key,
    default_cache_dir,
    resolve_adapter,
    resolve_model,
)
from hearthlm.llm.text import CHATML_TEMPLATE

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SCORE_BATCH = 16  # continuations scored at once over one repeated context cache


def pick_device(device: str) -> str:
    """The torch device for ``device``: ``auto`` is CUDA when present, else CPU.

    Raises:
        ModelLoadError: ``cuda`` was asked for and CUDA is not available.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for but CUDA is not available; use 'auto'.")
    return device


def cached_safetensors(source: ModelSource, cache_dir: Path | None) -> Path:
    """The folder of a GGUF's dequantized safetensors copy, converting it on first use.

    The copy is written to a temporary folder and renamed into place, so an interrupted
    conversion never leaves a half-written model behind. Processes that want the same copy at
    once (the processes of one training run) take turns under a file lock: one converts, and
    the others load its copy, which is never replaced under them.
    """
    folder = (cache_dir or default_cache_dir()) / "models" / conversion_key(source.path)
    return made_once(folder, _converted, lambda target: _convert(source, target))


def _converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _convert(source: ModelSource, folder: Path) -> None:
    """Dequantize the GGUF at ``source`` into a transformers folder at ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", source.path, folder)
    directory, name = str(source.path.parent), source.path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    except Exception as exc:  # transformers raises many types for unreadable GGUFs
        raise ModelLoadError(
            f"transformers could not read the GGUF {source.path}: {exc}. "
            "Check that the file is complete and that the 'gguf' package is installed."
        ) from exc
    _drop_gguf_marker(model)
    # unique: a process on another machine sharing the cache may convert it at once
    with atomic_folder(folder, unique=True) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "hearthlm_source.json").write_text(
            json.dumps({"gguf": str(source.path), "name": source.name}), encoding="utf-8"
        )


def _drop_gguf_marker(model: Any) -> None:
    """transformers tags a model read from GGUF as quantized and then refuses to save it. Without
    the optional GGUF kernels the weights are fully dequantized already, so the tag can go."""
    import torch

    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linear or any(m.weight.dtype != torch.float32 for m in linear):
        raise ModelLoadError("the GGUF was not fully dequantized; uninstall 'kernels' and retry.")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


class TransformersBackend(Backend):
    """Runs a causal LM with PyTorch, on CUDA when present, float32 or bfloat16."""

    name = "transformers"
    logprobs_while_generating = True

    def __init__(self, model: Any, tokenizer: Any, source: ModelSource, device: str) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.device = device
        self.model_name = source.name
        self.chat_template = tokenizer.chat_template or CHATML_TEMPLATE
        self.bos_token = tokenizer.bos_token or ""
        self.eos_token = tokenizer.eos_token or ""
        self.context_size = int(getattr(model.config, "max_position_embeddings", 2048))
        self.stop_token_ids = frozenset(_eos_ids(model, tokenizer))
        embedded = getattr(model.config, "vocab_size", None) or len(tokenizer)
        self.vocab_size = min(int(embedded), len(tokenizer))
        self.soft_prompt: torch.Tensor | None = None  # prompt-tuning adapters prepend this
        self._grammars = GrammarCache()
        # transformers 5.24 renamed `past_key_values` to `cache`; accept both generations.
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def load(cls, config: LLMConfig) -> TransformersBackend:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        source = resolve_model(config.model)
        folder = cached_safetensors(source, config.cache_dir) if source.is_gguf else source.path
        device = pick_device(config.device)
        dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load the model folder {folder}: {exc}") from exc
        backend = cls(model, tokenizer, source, device)
        if config.context_size:
            backend.context_size = min(config.context_size, backend.context_size)
        if config.adapter is not None:
            backend._apply_adapter(resolve_adapter(config.adapter))
        backend.model.to(device).eval()
        return backend

    def _apply_adapter(self, adapter: Path) -> None:
        from peft import PeftModel

        if adapter.suffix == ".gguf":
            raise ModelLoadError(
                f"{adapter} is a GGUF LoRA, which only the llamacpp backend loads; "
                "give the transformers backend the PEFT adapter folder instead."
            )
        if is_bottleneck_folder(adapter):
            self.model = load_bottleneck_adapters(self.model, adapter)
            self.model_name = f"{self.source.name}+{_adapter_name(adapter)}"
            return
        with warnings.catch_warnings():  # PEFT calls a transformers API deprecated for v6
            warnings.filterwarnings("ignore", category=FutureWarning)
            peft_model = PeftModel.from_pretrained(self.model, str(adapter))
        if peft_model.peft_config["default"].is_prompt_learning:
            # Prompt tuning: keep the learned virtual-token embeddings and prepend them at prefill.
            self.soft_prompt = peft_model.get_prompt(batch_size=1).detach()
            self.model = peft_model.get_base_model()
        else:
            self.model = peft_model.merge_and_unload()
        self.model_name = f"{self.source.name}+{_adapter_name(adapter)}"

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def generate(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        constraint: Constraint | None = None,
    ) -> Iterator[int]:
        for token, _ in self._generate(prompt_ids, sampling, constraint, None):
            yield token

    def generate_logprobs(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        constraint: Constraint | None,
        top: int,
    ) -> Iterator[tuple[int, Scored]]:
        for token, scored in self._generate(prompt_ids, sampling, constraint, top):
            if scored is not None:  # always, with top given
                yield token, scored

    def _generate(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        constraint: Constraint | None,
        top: int | None,
    ) -> Iterator[tuple[int, Scored | None]]:
        """Each token, and with ``top`` its record (:meth:`generate_logprobs`)."""
        import torch
        from transformers import DynamicCache

        matcher = self._matcher(constraint) if constraint else None
        processors = _logits_processors(sampling)
        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(sampling.seed if sampling.seed is not None else _random_seed())
        with torch.inference_mode():
            ids = torch.tensor([prompt_ids], device=self.device)  # (1, prompt_len)
            cache = DynamicCache()
            logits = self._prefill(ids, cache)  # (1, vocab)
            while True:
                raw = None if top is None else logits[0].float().cpu().numpy()  # (vocab,)
                if matcher is not None:
                    logits = matcher.mask(logits)
                scores = processors(ids, logits.float())
                if generator is None:
                    token = int(scores.argmax(dim=-1))
                else:
                    probs = torch.softmax(scores, dim=-1)
                    token = int(torch.multinomial(probs, 1, generator=generator))
                if token in self.stop_token_ids:
                    return
                yield token, None if raw is None else scored_token(raw, token, top or 0)
                if matcher is not None and matcher.accept(token):
                    return
                step = torch.tensor([[token]], device=self.device)
                ids = torch.cat([ids, step], dim=1)
                logits = self._forward(input_ids=step, cache=cache)

    def loglikelihood(self, context: list[int], continuation: list[int]) -> float:
        import torch

        ids = context + continuation
        with torch.inference_mode():
            tensor = torch.tensor([ids], device=self.device)  # (1, len)
            logits = self.model(input_ids=tensor).logits[0, len(context) - 1 : -1].float()
            logprobs = torch.log_softmax(logits, dim=-1)  # (len(continuation), vocab)
            targets = torch.tensor(continuation, device=self.device)
            return float(logprobs.gather(1, targets[:, None]).sum())

    def loglikelihoods(
        self, context: list[int], continuations: list[list[int]], best_only: bool | int = False
    ) -> list[float]:
        """The context is run once; its KV cache is repeated for each batch of
        ``SCORE_BATCH`` continuations, so a tool call's hundreds of candidate spans cost their
        own tokens, not the prompt's again each. ``best_only`` changes nothing here."""
        import torch
        from transformers import DynamicCache

        if not continuations:
            return []
        if not context:
            return [self.loglikelihood(context, c) for c in continuations]
        with torch.inference_mode():
            cache = DynamicCache()
            head = self._forward(input_ids=torch.tensor([context], device=self.device), cache=cache)
            first = torch.log_softmax(head[0].float(), dim=-1)  # (vocab,): each first token
            scores = []
            for start in range(0, len(continuations), SCORE_BATCH):
                part = continuations[start : start + SCORE_BATCH]
                scores += self._continued(cache, first, part)
        return scores

    def _continued(self, cache: Any, first: torch.Tensor, part: list[list[int]]) -> list[float]:
        """Scores of ``part`` after the context held in ``cache``. Continuations are padded on
        the right, so no real token attends to padding and no mask is needed."""
        import torch

        width = max(len(c) for c in part)
        totals = [float(first[c[0]]) if c else 0.0 for c in part]
        if width < 2:
            return totals
        rows = torch.tensor([c + [0] * (width - len(c)) for c in part], device=self.device)
        shared = copy.deepcopy(cache)  # repeated in place: the context's own stays whole
        shared.batch_repeat_interleave(len(part))
        inputs = {"input_ids": rows[:, :-1], self._cache_kwarg: shared, "use_cache": True}
        logits = self.model(**inputs).logits.float()  # (n, width - 1, vocab)
        picked = torch.log_softmax(logits, dim=-1).gather(2, rows[:, 1:, None])[:, :, 0]
        for i, c in enumerate(part):
            totals[i] += float(picked[i, : len(c) - 1].sum()) if len(c) > 1 else 0.0
        return totals

    def token_logprobs(self, ids: list[int], top: int = 0) -> list[tuple[float, dict[int, float]]]:
        import torch

        from hearthlm.llm.scoring import token_logprobs

        with torch.inference_mode():
            tensor = torch.tensor([ids], device=self.device)  # (1, len)
            logits = self.model(input_ids=tensor).logits[0, :-1].float()
            rows = torch.log_softmax(logits, dim=-1).cpu().numpy()  # (len - 1, vocab)
        return token_logprobs(rows, ids[1:], top)

    def _prefill(self, ids: torch.Tensor, cache: Any) -> torch.Tensor:
        if self.soft_prompt is None:
            return self._forward(input_ids=ids, cache=cache)
        import torch

        embeds = self.model.get_input_embeddings()(ids)  # (1, prompt_len, hidden)
        soft = self.soft_prompt.to(embeds.device, embeds.dtype)  # (1, n_virtual, hidden)
        return self._forward(inputs_embeds=torch.cat([soft, embeds], dim=1), cache=cache)

    def _forward(self, cache: Any, **inputs: Any) -> torch.Tensor:
        """Logits of the last position, (1, vocab); the KV cache grows in place."""
        inputs[self._cache_kwarg] = cache
        return self.model(**inputs, use_cache=True, logits_to_keep=1).logits[:, -1, :]

    def _matcher(self, constraint: Constraint) -> _GrammarMatcher:
        compiled = self._grammars.get(
            constraint, lambda c: _compile(self.tokenizer, _vocab_size(self.model), c)
        )
        return _GrammarMatcher(compiled)


class _GrammarMatcher:
    """xgrammar's matcher, masking the logits to the tokens the grammar allows."""

    def __init__(self, compiled: Any) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        self._matcher.fill_next_token_bitmask(self._bitmask)
        logits = logits.float()
        self._xgr.apply_token_bitmask_inplace(logits, self._bitmask.to(logits.device))
        return logits

    def accept(self, token: int) -> bool:
        """Advance the grammar; True once it is complete."""
        self._matcher.accept_token(token)
        return bool(self._matcher.is_terminated())


@lru_cache(maxsize=64)
def _tokenizer_info(tokenizer: Any, vocab_size: int) -> Any:
    import xgrammar as xgr

    return xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)


def _compile(tokenizer: Any, vocab_size: int, constraint: Constraint) -> Any:
    import xgrammar as xgr

    compiler = xgr.GrammarCompiler(_tokenizer_info(tokenizer, vocab_size))
    if constraint.grammar is not None:
        return compiler.compile_grammar(xgr.Grammar.from_ebnf(constraint.grammar))
    # The same GBNF as on llama.cpp: xgrammar's own converter lets a string with maxLength (every
    # free string in a call) hold raw control characters, which JSON forbids.
    grammar = xgr.Grammar.from_ebnf(json_schema_gbnf(constraint.json_schema or {}))
    if constraint.allow_text:
        # Plain text that is not a tool call: it may not open with "{" or whitespace.
        text = xgr.Grammar.from_ebnf(f"root ::= {TEXT_REPLY}")
        grammar = xgr.Grammar.union(grammar, text)
    return compiler.compile_grammar(grammar)


def _logits_processors(sampling: SamplingConfig) -> Any:
    """Penalty, top-k and top-p on the raw distribution, then temperature: llama.cpp's order, so
    that both backends give the settings the same meaning."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if sampling.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
    if sampling.temperature > 0:
        if sampling.top_k > 0:
            processors.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            processors.append(TopPLogitsWarper(sampling.top_p))
        processors.append(TemperatureLogitsWarper(sampling.temperature))
    return processors


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    for special in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        token = tokenizer.convert_tokens_to_ids(special)
        if isinstance(token, int) and token != tokenizer.unk_token_id:
            ids.add(token)
    return ids


def _vocab_size(model: Any) -> int:
    return int(model.get_output_embeddings().weight.shape[0])


def _adapter_name(adapter: Path) -> str:
    """``runs/lora/adapter`` is named after its run folder, ``lora``."""
    return adapter.parent.name if adapter.name == "adapter" else adapter.name


def _random_seed() -> int:
    import secrets

    return secrets.randbits(63)
