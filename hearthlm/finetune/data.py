"""Instruction data: read, render with the model's chat template, tokenize, mask, split, pack, mix.

Four shapes are read from JSON or JSONL: prompt/completion, chat ``messages``, Alpaca
(``instruction``, ``input``, ``output``), and any shape through a field mapping and a prompt
template (DialogSum: ``template="Summarize…\\n\\n{dialogue}"``, ``completion_field="summary"``).
Labels are -100 on every token the model is not asked to write, so the loss counts completion
(assistant) tokens only.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from hearthlm.config import DataDefaults
from hearthlm.errors import TrainingError
from hearthlm.rows import BadRows, Row, read_rows

IGNORE = -100


class DataSpec(DataDefaults):
    """One training dataset and how to read it (its reading settings as
    :class:`~hearthlm.config.DataDefaults`)."""

    path: Path
    weight: float = Field(1.0, gt=0, description="Share of this dataset in a mixture.")
    limit: int | None = Field(None, ge=1)


@dataclass
class Example:
    """One tokenized training example: ``labels`` equals ``input_ids`` where the loss counts
    (completion tokens) and ``IGNORE`` (-100) elsewhere; ``source`` is ``file:line``."""

    input_ids: list[int]
    labels: list[int]
    source: str  # file:line

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Dataset:
    """Training and validation examples, with what building them did: how many were cut to
    ``max_length`` or dropped, and how many came from each file."""

    train: list[Example]
    validation: list[Example]
    truncated: int = 0  # examples cut to max_length
    dropped: int = 0  # examples whose prompt alone filled max_length
    sources: dict[str, int] = field(default_factory=dict)  # examples per file

    def report(self) -> dict[str, Any]:
        tokens = sum(sum(1 for x in e.labels if x != IGNORE) for e in self.train)
        return {
            "train_examples": len(self.train),
            "validation_examples": len(self.validation),
            "train_completion_tokens": tokens,
            "truncated": self.truncated,
            "dropped": self.dropped,
            "sources": self.sources,
        }


def read_conversations(spec: DataSpec) -> list[tuple[list[dict[str, Any]], str]]:
    """(messages, "file:line") per row; any bad row is an error naming its file and line."""
    bad = BadRows(strict=True, error=TrainingError, hint="")
    out = []
    for row in read_rows(spec.path, bad):
        out.append((_messages(row, spec, bad), f"{row.path}:{row.line}"))
        if spec.limit and len(out) == spec.limit:
            break
    if not out:
        raise TrainingError(f"{spec.path}: the file holds no examples")
    return out


def _messages(row: Row, spec: DataSpec, bad: BadRows) -> list[dict[str, Any]]:
    values = row.values
    shape = spec.shape
    if shape == "auto":
        if "messages" in values:
            shape = "messages"
        elif "instruction" in values and "output" in values:
            shape = "alpaca"
        elif spec.template is not None:
            shape = "fields"
        else:
            shape = "prompt_completion"
    system = [{"role": "system", "content": spec.system}] if spec.system else []
    if shape == "messages":
        messages = values.get("messages")
        if not isinstance(messages, list) or not messages:
            bad.add(row.path, row.line, "'messages' must be a non-empty list")
            return []
        ok = all(
            isinstance(m, dict)
            and m.get("role") in ("system", "user", "assistant")
            and (isinstance(m.get("content"), str) or _is_segments(m))
            for m in messages
        )
        if not ok:
            bad.add(row.path, row.line, "each message needs a role and a string content")
        if messages[-1]["role"] != "assistant":
            bad.add(row.path, row.line, "the last message must be the assistant's")
        return system + [_message(m) for m in messages]
    if shape == "alpaca":
        instruction, output = _field(row, "instruction", bad), _field(row, "output", bad)
        extra = str(values.get("input") or "").strip()
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        return [*system, {"role": "user", "content": prompt}, _assistant(output)]
    completion = _field(row, spec.completion_field, bad)
    if spec.template is not None:
        try:
            prompt = spec.template.format(**values)
        except KeyError as exc:
            bad.add(row.path, row.line, f"missing field {exc} (used by the template)")
    else:
        prompt = _field(row, spec.prompt_field, bad)
    return [*system, {"role": "user", "content": prompt}, _assistant(completion)]


def _is_segments(message: dict[str, Any]) -> bool:
    """An assistant turn given as ``[{"text": …, "train": bool}, …]``: parts with
    ``"train": false`` (tool observations in an agent trace) are shown but not learned."""
    content = message.get("content")
    return (
        message.get("role") == "assistant"
        and isinstance(content, list)
        and all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in content)
    )


def _message(m: dict[str, Any]) -> dict[str, Any]:
    if _is_segments(m):
        parts = m["content"]
        return {
            "role": "assistant",
            "content": "".join(p["text"] for p in parts),
            "segments": parts,
        }
    return {"role": m["role"], "content": m["content"]}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _field(row: Row, name: str, bad: BadRows) -> str:
    value = row.values.get(name)
    if value is None or not str(value).strip():
        bad.add(row.path, row.line, f"missing field {name!r}")
    return str(value)


def tokenize_chat(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """Token ids of the rendered chat and labels that keep only the assistant turns' tokens (their
    closing end-of-turn token included, so the model learns to stop).

    Each assistant turn is tokenized on its own after the tokens of the chat before it, as the
    model reads it when it writes that turn: encoded whole, a reply that begins with spaces or
    newlines ("    def f():") would merge its first characters into the template's "assistant\n"
    token, and the labels would part from what generation produces."""
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # the text tokenized so far
    for end in range(1, len(messages) + 1):
        if messages[end - 1]["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[: end - 1], generation_prompt=True)
        through = _render(tokenizer, messages[:end], generation_prompt=False)
        if not before.startswith(done):
            raise TrainingError("the chat template is not append-only across turns")
        if not through.startswith(before):
            raise TrainingError("the chat template renders a turn differently in context")
        prompt = _encode(tokenizer, before[len(done) :])
        reply = _encode(tokenizer, through[len(before) :])
        ids += prompt + reply
        labels += [IGNORE] * len(prompt) + reply
        if "segments" in messages[end - 1]:
            _mask_segments(tokenizer, messages[end - 1], through[len(before) :], labels)
        done = through
    return ids, labels


def _mask_segments(tokenizer: Any, message: dict[str, Any], reply: str, labels: list[int]) -> None:
    """Set labels to IGNORE on the tokens of the turn's untrained segments; the turn's tokens
    (``reply``, its text as rendered) are the last of ``labels``."""
    offsets = tokenizer(reply, add_special_tokens=False, return_offsets_mapping=True)
    origin = reply.rfind(message["content"])
    hidden, cursor = [], origin
    for part in message["segments"]:
        if not part.get("train", True):
            hidden.append((cursor, cursor + len(part["text"])))
        cursor += len(part["text"])
    spans = offsets["offset_mapping"]
    first = len(labels) - len(spans)
    for index, (begin, _) in enumerate(spans):
        if any(a <= begin < b for a, b in hidden):
            labels[first + index] = IGNORE


def _render(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    if not generation_prompt:
        text = text.rstrip("\n")  # a trailing newline after the end-of-turn is not learned
    return str(text)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


def build_dataset(
    tokenizer: Any,
    specs: Sequence[DataSpec],
    *,
    max_length: int = 512,
    validation: float = 0.1,
    pack: bool = False,
    seed: int = 0,
    total: int | None = None,
) -> Dataset:
    """Tokenized, masked examples from one or more datasets.

    With several datasets the mixture follows their weights: each contributes
    ``weight / sum(weights)`` of ``total`` examples (default: the sum of their sizes), sampled
    with a seeded shuffle and repeated when a dataset is smaller than its share. The validation
    part is held out per dataset before mixing, so no example is in both.
    """
    rng = random.Random(seed)
    train_parts: list[list[Example]] = []
    held_out: list[Example] = []
    truncated = dropped = 0
    sources: dict[str, int] = {}
    for spec in specs:
        examples = []
        for messages, where in read_conversations(spec):
            try:
                ids, labels = tokenize_chat(tokenizer, messages)
            except TrainingError as exc:
                raise TrainingError(f"{where}: {exc}") from None
            if len(ids) > max_length:
                ids, labels = ids[:max_length], labels[:max_length]
                truncated += 1
            if all(x == IGNORE for x in labels):
                dropped += 1
                continue
            examples.append(Example(ids, labels, where))
        rng.shuffle(examples)
        cut = round(len(examples) * validation) if len(examples) > 1 else 0
        held_out += examples[:cut]
        train_parts.append(examples[cut:])
        sources[str(spec.path)] = len(examples)
    if not any(train_parts):
        raise TrainingError("no training examples left after the validation split")
    train = _mix(train_parts, [s.weight for s in specs], total, rng)
    if pack:
        train = pack_examples(train, max_length)
    return Dataset(train, held_out, truncated, dropped, sources)


def _mix(
    parts: list[list[Example]], weights: list[float], total: int | None, rng: random.Random
) -> list[Example]:
    if len(parts) == 1 and total is None:
        return parts[0]
    total = total or sum(map(len, parts))
    mixed: list[Example] = []
    for part, weight in zip(parts, weights, strict=True):
        want = round(total * weight / sum(weights))
        if part:
            mixed += [part[i % len(part)] for i in range(want)]
    rng.shuffle(mixed)
    return mixed


def pack_examples(examples: list[Example], max_length: int) -> list[Example]:
    """Concatenate examples into blocks of up to ``max_length`` tokens (fewer padded steps)."""
    packed: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    for example in examples:
        if ids and len(ids) + len(example) > max_length:
            packed.append(Example(ids, labels, "packed"))
            ids, labels = [], []
        ids = ids + example.input_ids
        labels = labels + example.labels
    if ids:
        packed.append(Example(ids, labels, "packed"))
    return packed
