"""The llama.cpp backend: runs the GGUF directly, about five times faster decoding on CPU.

Tool calls and structured output use llama.cpp's own grammar engine: the JSON schema becomes GBNF
whose strings are strict JSON strings (see :mod:`hearthlm.llm.grammar`).
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import weakref
from collections.abc import Iterator
from typing import Any

from hearthlm.config import LLMConfig, SamplingConfig
from hearthlm.errors import ModelLoadError
from hearthlm.llm.backend import TEXT_REPLY, Backend, Constraint, GrammarCache
from hearthlm.llm.grammar import json_schema_gbnf
from hearthlm.llm.sources import ModelSource, resolve_adapter, resolve_model
from hearthlm.llm.text import CHATML_TEMPLATE

# Plain text that is not a tool call: it may not open with "{" or whitespace.
_TEXT_RULE = f"text-reply ::= {TEXT_REPLY}"
# Every llama.cpp model this process loaded, freed at exit (see _release).
_LOADED: weakref.WeakSet[Any] = weakref.WeakSet()


class LlamaCppBackend(Backend):
    """A GGUF model run by ``llama_cpp.Llama``; ``device='cuda'`` offloads every layer."""

    name = "llamacpp"

    def __init__(self, llm: Any, source: ModelSource) -> None:
        super().__init__()
        self.llm = llm
        self.source = source
        self.model_name = source.name
        meta = llm.metadata
        self.chat_template = meta.get("tokenizer.chat_template") or CHATML_TEMPLATE
        self.bos_token = _token_text(llm, llm.token_bos())
        self.eos_token = _token_text(llm, llm.token_eos())
        # llama.cpp pads its context to a multiple of 256; the Python side holds the size asked for.
        self.context_size = min(int(llm.n_ctx()), len(llm.input_ids))
        vocab = llm._model.vocab
        import llama_cpp

        self.stop_token_ids = frozenset(
            t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)
        )
        self._grammars = GrammarCache()
        self._scorer: Any = None  # a second context that keeps every position's logits

    @classmethod
    def load(cls, config: LLMConfig) -> LlamaCppBackend:
        from llama_cpp import Llama

        source = resolve_model(config.model)
        if not source.is_gguf:
            raise ModelLoadError(
                f"the llamacpp backend runs GGUF files, but {source.path} is a Hugging Face "
                "folder. Use backend 'transformers', or export a GGUF with "
                "`hearth finetune export`."
            )
        lora = None
        if config.adapter is not None:
            lora = resolve_adapter(config.adapter)
            if lora.suffix != ".gguf":
                raise ModelLoadError(
                    f"{lora} is a PEFT adapter folder; llama.cpp needs a GGUF LoRA. Export one "
                    "with `hearth finetune export --gguf-lora`, or use backend 'transformers'."
                )
        threads = config.threads or os.cpu_count() or 1
        try:
            llm = Llama(
                model_path=str(source.path),
                n_ctx=config.context_size or 0,  # 0: the model's trained context
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=-1 if config.device == "cuda" else 0,
                lora_path=str(lora) if lora else None,
                last_n_tokens_size=config.context_size or 8192,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"llama.cpp could not load {source.path}: {exc}") from exc
        _LOADED.add(llm)
        backend = cls(llm, source)
        if lora is not None:
            backend.model_name = f"{source.name}+{lora.stem}"
        return backend

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def decode(self, ids: list[int]) -> str:
        return bytes(self.llm.detokenize(ids)).decode("utf-8", errors="replace")

    def generate(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        constraint: Constraint | None = None,
    ) -> Iterator[int]:
        if sampling.seed is not None:
            self.llm.set_seed(sampling.seed)
        grammar = self._grammar(constraint) if constraint else None
        tokens = self.llm.generate(
            prompt_ids,
            temp=sampling.temperature,
            top_k=sampling.top_k,  # 0 disables it, as on the transformers backend
            top_p=sampling.top_p,
            min_p=0.0,
            typical_p=1.0,
            repeat_penalty=sampling.repetition_penalty,
            grammar=grammar,
        )
        try:
            for token in tokens:
                if token in self.stop_token_ids:
                    return
                yield token
        finally:
            tokens.close()

    def loglikelihood(self, context: list[int], continuation: list[int]) -> float:
        import numpy as np

        scorer = self._scoring_context()
        ids = (context + continuation)[-int(scorer.n_ctx()) :]
        first = len(ids) - len(continuation)
        scorer.reset()
        scorer.eval(ids)
        logits = np.asarray(scorer.scores[: len(ids)], dtype=np.float64)  # (len(ids), vocab)
        # the logits at position i predict token i + 1
        rows = _log_softmax(logits[first - 1 : len(ids) - 1])
        return float(rows[np.arange(len(rows)), ids[first:]].sum())

    def loglikelihoods(
        self, context: list[int], continuations: list[list[int]], best_only: bool = False
    ) -> list[float]:
        import numpy as np

        scorer = self._scoring_context()
        room = int(scorer.n_ctx()) - max((len(c) for c in continuations), default=0)
        context = context[-room:]
        # The context is evaluated once (and only past the prefix it shares with the last
        # one); each continuation is then evaluated from the context's end.
        kept = scorer.input_ids[: scorer.n_tokens].tolist()
        shared = 0
        while shared < min(len(kept), len(context) - 1) and kept[shared] == context[shared]:
            shared += 1
        scorer.n_tokens = shared
        scorer.eval(context[shared:])
        end = len(context)
        first = _log_softmax(np.asarray(scorer.scores[end - 1 : end], dtype=np.float64))[0]
        evaluated: list[tuple[list[int], Any]] = []  # token paths and their log-prob rows

        def rows_after(path: list[int]) -> Any:
            """Log-prob rows after each token of ``path``, reusing a longer path's rows."""
            for done, rows in evaluated:
                if done[: len(path)] == path:
                    return rows
            scorer.n_tokens = end
            scorer.eval(path)
            rows = _log_softmax(np.asarray(scorer.scores[end : end + len(path)], dtype=np.float64))
            evaluated.append((path, rows))
            return rows

        totals = [-math.inf] * len(continuations)
        best = -math.inf
        # Likeliest first token first, and the longest of those sharing it, whose evaluation
        # then serves the shorter ones ("Paris", "Paris to", "Paris to Rome"). A continuation
        # scores at most its first token's log-probability, so with best_only the rest cannot
        # win once that falls below the best.
        order = sorted(
            range(len(continuations)),
            key=lambda i: (-first[continuations[i][0]], -len(continuations[i])),
        )
        for i in order:
            continuation = continuations[i]
            total = float(first[continuation[0]])
            if best_only and total <= best:
                break
            if len(continuation) > 1:
                rows = rows_after(continuation[:-1])
                picked = rows[np.arange(len(continuation) - 1), continuation[1:]]
                total += float(picked.sum())
            totals[i] = total
            best = max(best, total)
        scorer.n_tokens = end
        return totals

    def _scoring_context(self) -> Any:
        """The generation context computes the last position's logits only; scoring needs all,
        so a second, small context over the same (memory-mapped) weights keeps them."""
        if self._scorer is None:
            from llama_cpp import Llama

            params = self.llm.context_params
            self._scorer = Llama(
                model_path=str(self.source.path),
                n_ctx=min(self.context_size, 1024),
                n_threads=params.n_threads,
                n_threads_batch=params.n_threads_batch,
                n_gpu_layers=self.llm.model_params.n_gpu_layers,
                logits_all=True,
                verbose=False,
            )
            _LOADED.add(self._scorer)
        return self._scorer

    def _grammar(self, constraint: Constraint) -> Any:
        return self._grammars.get(constraint, _build_grammar)


@atexit.register
def _release() -> None:
    """Free the loaded models while the interpreter is still whole, then close the two
    /dev/null files llama-cpp-python opens at import and never closes. Left to shutdown, their
    finalizers print "ResourceWarning: unclosed file" and "'NoneType' object is not callable"."""
    for llm in list(_LOADED):
        llm.close()
    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(utils, name, None)
        if handle is not None:
            handle.close()


def _build_grammar(constraint: Constraint) -> Any:
    from llama_cpp import LlamaGrammar

    if constraint.grammar is not None:
        gbnf = constraint.grammar
    else:
        gbnf = json_schema_gbnf(constraint.json_schema or {})
    if constraint.allow_text:
        gbnf = gbnf.replace("root ::=", "tool-call ::=", 1)
        gbnf = f"root ::= tool-call | text-reply\n{_TEXT_RULE}\n{gbnf}"
    return LlamaGrammar.from_string(gbnf, verbose=False)


def _log_softmax(rows: Any) -> Any:
    """Row-wise log-softmax of a (n, vocab) float array."""
    import numpy as np

    top = rows.max(axis=1, keepdims=True)
    return rows - (top + np.log(np.exp(rows - top).sum(axis=1, keepdims=True)))


def _token_text(llm: Any, token: int) -> str:
    if token < 0:
        return ""
    return bytes(llm.detokenize([token], special=True)).decode("utf-8", errors="replace")
