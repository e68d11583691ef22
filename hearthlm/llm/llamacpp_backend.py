"""The llama.cpp backend: runs the GGUF directly, about five times faster decoding on CPU.

Tool calls and structured output use llama.cpp's own grammar engine: the JSON schema becomes GBNF
whose strings are strict JSON strings (see :mod:`hearthlm.llm.grammar`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import sys
import weakref
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

from hearthlm.config import LLMConfig, SamplingConfig
from hearthlm.errors import ContextWindowError, ModelLoadError
from hearthlm.llm.backend import Backend, Constraint, GrammarCache, Scored
from hearthlm.llm.grammar import constraint_gbnf
from hearthlm.llm.llama_batch import (
    end_of_generation_ids,
    last_logits,
    model_of,
    trained_context,
)
from hearthlm.llm.scoring import (
    SCORING_WINDOW,
    common_prefix,
    log_softmax,
    score_continuations,
    scored_token,
    token_logprobs,
)
from hearthlm.llm.sources import ModelSource, resolve_adapter, resolve_model
from hearthlm.llm.text import CHATML_TEMPLATE

log = logging.getLogger(__name__)

# Every llama.cpp model this process loaded, freed at exit (see _release).
_LOADED: weakref.WeakSet[Any] = weakref.WeakSet()
_BATCHED: weakref.WeakSet[Any] = weakref.WeakSet()  # batched engines: their threads stop first
# Scoring contexts a model keeps in process (LlamaCppBackend._scoring_context). Tokens
# evaluated per tool call of bench_tools.py's held-out set (bind_tools "any"): 852 with one;
# with two, 724 when the one read longest ago makes room, 601 when the one holding fewest does.
SCORING_CONTEXTS = 2
# A scoring context is read again from what it holds when it shares at least this many first
# tokens with the text to score (a system prompt and a tools list), or half of what it holds.
MIN_SHARED = 16
# A scoring context not read for this many reads makes room first, however much it holds (a
# tool call reads about ten times).
STALE_READS = 64


class LlamaCppBackend(Backend):
    """A GGUF model run by ``llama_cpp.Llama``; ``device='cuda'`` offloads every layer."""

    name = "llamacpp"
    logprobs_while_generating = True

    def __init__(self, llm: Any, source: ModelSource, batched: Any = None) -> None:
        super().__init__()
        if batched is not None:  # continuous batching (hearthlm.llm.batching): no lock
            self.lock = contextlib.nullcontext()
        self.batched = batched
        self.llm = llm
        self.source = source
        self.model_name = source.name
        meta = llm.metadata
        self.chat_template = meta.get("tokenizer.chat_template") or CHATML_TEMPLATE
        self.bos_token = token_text(llm, llm.token_bos())
        self.eos_token = token_text(llm, llm.token_eos())
        # llama.cpp pads its context to a multiple of 256; the Python side holds the size asked for.
        self.context_size = min(int(llm.n_ctx()), len(llm.input_ids))
        if batched is not None:
            self.context_size = batched.context_size
        self.stop_token_ids = end_of_generation_ids(llm)
        self.vocab_size = int(llm.n_vocab())
        self._grammars = GrammarCache()
        self.lora: Path | None = None  # a GGUF LoRA, applied in scoring as in generating
        # contexts that keep every position's logits, each with what it last read, and when
        self._scorers: list[Any] = []
        self._read_at: list[int] = []
        self._reads = 0

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
                    f"{lora} is a PEFT adapter folder; llama.cpp needs a GGUF LoRA. Merge it "
                    "into a GGUF model with `hearth finetune export DIR --format gguf-q8_0 --out "
                    "model.gguf` and load that as llm.model, or use backend 'transformers'."
                )
        threads = config.threads or os.cpu_count() or 1
        batched = config.parallel > 1
        warn_if_openmp()
        try:
            llm = Llama(
                model_path=str(source.path),
                # 0: the model's trained context. A batched backend decodes in contexts of its
                # own; this one only tokenizes.
                n_ctx=64 if batched else config.context_size or 0,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=-1 if config.device == "cuda" else 0,
                lora_path=str(lora) if lora else None,
                last_n_tokens_size=config.context_size or 8192,
                flash_attn=bool(config.flash_attention),  # unset: off, one request at a time
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"llama.cpp could not load {source.path}: {exc}") from exc
        _LOADED.add(llm)
        engine = None
        if batched:
            from hearthlm.llm.batching import BatchedEngine

            stops = end_of_generation_ids(llm)
            size = config.context_size or trained_context(llm)
            engine = BatchedEngine(model_of(llm), stops, config, size)
            _BATCHED.add(engine)
        backend = cls(llm, source, engine)
        backend.lora = lora
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
        if self.batched is not None:
            yield from self.batched.generate(prompt_ids, sampling, constraint)
            return
        yield from self._generate(prompt_ids, sampling, constraint)

    def generate_logprobs(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        constraint: Constraint | None,
        top: int,
    ) -> Iterator[tuple[int, Scored]]:
        if self.batched is not None:
            yield from self.batched.generate(prompt_ids, sampling, constraint, top)
            return
        tokens = self._generate(prompt_ids, sampling, constraint)
        try:
            for token in tokens:  # the logits it was sampled from are the context's last
                yield token, scored_token(last_logits(self.llm), token, top)
        finally:
            tokens.close()

    def _generate(
        self,
        prompt_ids: list[int],
        sampling: SamplingConfig,
        constraint: Constraint | None = None,
    ) -> Generator[int, None, None]:
        if sampling.seed is not None:
            self.llm.set_seed(sampling.seed)
        grammar = self._grammar(constraint) if constraint else None
        self._evaluate_head(prompt_ids)
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

    def _evaluate_head(self, prompt_ids: list[int]) -> None:
        """Evaluate all of the prompt but its last token, reusing the cells that hold a shared
        prefix; ``Llama.generate`` then evaluates that last token alone. The first token is
        then drawn from the same numbers whether the prompt was cached or not (llama.cpp
        rounds a batch of many tokens differently from one), so a seeded reply repeats."""
        llm, head = self.llm, prompt_ids[:-1]
        shared = _shared_prefix(llm, head)
        llm.n_tokens = shared
        llm.eval(head[shared:])

    def loglikelihood(self, context: list[int], continuation: list[int]) -> float:
        if self.batched is not None:
            return float(self.batched.loglikelihoods(context, [continuation])[0])
        import numpy as np

        scorer = self._scoring_context(context)
        ids = (context + continuation)[-int(scorer.n_ctx()) :]
        first = len(ids) - len(continuation)
        _evaluate_past_shared(scorer, ids)
        logits = np.asarray(scorer.scores[: len(ids)], dtype=np.float64)  # (len(ids), vocab)
        # the logits at position i predict token i + 1
        rows = log_softmax(logits[first - 1 : len(ids) - 1])
        return float(rows[np.arange(len(rows)), ids[first:]].sum())

    def loglikelihoods(
        self, context: list[int], continuations: list[list[int]], best_only: bool | int = False
    ) -> list[float]:
        if self.batched is not None:
            return list(self.batched.loglikelihoods(context, continuations, best_only))
        import numpy as np

        scorer = self._scoring_context(context)
        room = int(scorer.n_ctx()) - max((len(c) for c in continuations), default=0)
        context = context[-room:]
        # The context is evaluated once; each continuation is then evaluated from its end.
        _evaluate_past_shared(scorer, context)
        end = len(context)
        first = log_softmax(np.asarray(scorer.scores[end - 1 : end], dtype=np.float64))[0]

        def rows_after(path: list[int], kept: int) -> Any:
            scorer.n_tokens = end + kept
            scorer.eval(path[kept:])
            rows = scorer.scores[end + kept : end + len(path)]
            return log_softmax(np.asarray(rows, dtype=np.float64))

        totals = score_continuations(first, rows_after, continuations, best_only)
        scorer.n_tokens = end
        return totals

    def token_logprobs(self, ids: list[int], top: int = 0) -> list[tuple[float, dict[int, float]]]:
        import numpy as np

        if self.batched is not None:
            rows = self.batched.rows(ids)
        else:
            scorer = self._scoring_context(ids)
            _check_window(ids, int(scorer.n_ctx()))
            _evaluate_past_shared(scorer, ids)
            rows = np.asarray(scorer.scores[: len(ids) - 1], dtype=np.float64)
        return token_logprobs(log_softmax(rows), ids[1:], top)

    def _scoring_context(self, ids: list[int]) -> Any:
        """The context to score text starting with ``ids`` in. The generation context computes
        the last position's logits only; scoring needs all, so small contexts over the same
        (memory-mapped) weights keep them, up to :data:`SCORING_CONTEXTS`, each holding what it
        last read, as llama.cpp's server keeps slots. The one holding the longest prefix of
        ``ids`` is taken when that prefix is worth keeping (:data:`MIN_SHARED` tokens, or half
        of what it holds); else a new one, up to the limit; else the one that holds the fewest
        tokens, the cheapest to evaluate again, unless one has not been read for
        :data:`STALE_READS` reads. A tool call reads the request under each tool's description
        (short prompts), then the tools prompt (long, the same for the next call with those
        tools but for the request), then the request under the chosen tool's description
        again: with one context, each evaluated the others' prompts again."""
        self._reads += 1
        scorers = self._scorers
        shared = [_shared_prefix(scorer, ids) for scorer in scorers]
        best = max(range(len(shared)), key=shared.__getitem__, default=None)
        if best is not None and (
            shared[best] >= MIN_SHARED or 2 * shared[best] >= scorers[best].n_tokens
        ):
            chosen = best
        elif len(scorers) < SCORING_CONTEXTS:
            from llama_cpp import Llama

            params = self.llm.context_params
            scorer = Llama(
                model_path=str(self.source.path),
                n_ctx=min(self.context_size, SCORING_WINDOW),
                n_threads=params.n_threads,
                n_threads_batch=params.n_threads_batch,
                n_gpu_layers=self.llm.model_params.n_gpu_layers,
                lora_path=str(self.lora) if self.lora else None,
                logits_all=True,
                flash_attn=params.flash_attn_type > 0,
                verbose=False,
            )
            _LOADED.add(scorer)
            scorers.append(scorer)
            self._read_at.append(0)
            chosen = len(scorers) - 1
        else:
            stale = [i for i, at in enumerate(self._read_at) if self._reads - at > STALE_READS]
            chosen = min(
                stale or range(len(scorers)),
                key=lambda i: self._read_at[i] if stale else scorers[i].n_tokens,
            )
        self._read_at[chosen] = self._reads
        return scorers[chosen]

    def _grammar(self, constraint: Constraint) -> Any:
        return self._grammars.get(constraint, _build_grammar)

    def describe(self) -> dict[str, Any]:
        facts = super().describe()
        if self.batched is not None:
            facts["parallel"] = self.batched.scheduler.context.n_seq
        return facts

    def close(self) -> None:
        """Stop the batched engine's scheduler, if any; requests in flight end with an error."""
        if self.batched is not None:
            self.batched.close()

    def __del__(self) -> None:
        # A dropped backend stops its scheduler before its model is freed: freed mid-step, the
        # model would be read by a llama_decode still running on the scheduler's thread.
        with contextlib.suppress(AttributeError, TypeError, ImportError):  # at teardown
            self.close()


@functools.cache
def warn_if_openmp() -> bool:
    """Warn once if llama.cpp here runs its threads on OpenMP; returns whether it does.

    torch ships the same ``libgomp.so.1``, so in a process that also runs torch (the embedder,
    training) llama.cpp shares torch's OpenMP runtime. Once torch has run parallel work on one
    thread and llama.cpp decodes on another (the batched engine's scheduler), that runtime counts
    more threads than cores and all but stops spinning at its barriers: each llama.cpp step
    sleeps and wakes its threads hundreds of times, and decoding ran 2.9x slower
    (``benchmarks/bench_threads.py``). ``make install`` builds llama.cpp with its own thread
    pool instead.
    """
    import llama_cpp

    openmp = b"OPENMP = 1" in llama_cpp.llama_print_system_info()
    if openmp:
        log.warning(
            "llama.cpp was built with OpenMP, which torch also uses: where both run on different "
            "threads of one process (hearth serve), decoding can be 3x slower. Rebuild it with "
            "its own thread pool: "
            'CMAKE_ARGS="-DGGML_OPENMP=OFF" pip install --force-reinstall --no-cache-dir '
            "--no-deps llama-cpp-python"
        )
    return openmp


def free_at_exit(llm: Any) -> Any:
    """Have a ``llama_cpp.Llama`` loaded elsewhere (a tokenizer) freed at exit with the
    models, not left to the interpreter's shutdown; returns it."""
    _LOADED.add(llm)
    return llm


@atexit.register
def _release() -> None:
    """Free the loaded models while the interpreter is still whole, then close the two
    /dev/null files llama-cpp-python opens at import and never closes. Left to shutdown, their
    finalizers print "ResourceWarning: unclosed file" and "'NoneType' object is not callable"."""
    for engine in list(_BATCHED):
        engine.close()
    for llm in list(_LOADED):
        llm.close()
    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(utils, name, None)
        if handle is not None:
            handle.close()


def _build_grammar(constraint: Constraint) -> Any:
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_string(constraint_gbnf(constraint), verbose=False)


def _shared_prefix(llm: Any, ids: list[int]) -> int:
    """How many first tokens of ``ids`` a ``llama_cpp.Llama`` holds from what it last read."""
    return common_prefix(llm.input_ids[: llm.n_tokens].tolist(), ids)


def _evaluate_past_shared(scorer: Any, ids: list[int]) -> None:
    """Have the scoring context hold ``ids`` and every position's logits, evaluating only
    past the prefix it shares with what it last read (its earlier rows stay valid); at least
    the last token is evaluated again."""
    shared = min(_shared_prefix(scorer, ids), len(ids) - 1)
    scorer.n_tokens = shared
    scorer.eval(ids[shared:])


def _check_window(ids: list[int], window: int) -> None:
    if len(ids) > window:
        raise ContextWindowError(
            f"the text to score is {len(ids)} tokens; scoring reads at most {window}. "
            "Score a shorter text."
        )


def token_text(llm: Any, token: int) -> str:
    """The text of one token, special tokens included ("" for none: a negative id)."""
    if token < 0:
        return ""
    return bytes(llm.detokenize([token], special=True)).decode("utf-8", errors="replace")
