"""Scoring given continuations by their log-likelihood, shared by the llama.cpp backends."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# Longest context a scoring call reads: its context is cut to fit beside the continuations.
SCORING_WINDOW = 1024


def score_continuations(
    first: Any,
    rows_after: Callable[[list[int], int], Any],
    continuations: list[list[int]],
    best_only: bool | int,
) -> list[float]:
    """The log-likelihood of each continuation, given ``first`` (the log-probabilities of the
    token after the context) and ``rows_after(path, kept)``, which evaluates ``path`` right
    after the context, where the first ``kept`` of its tokens are still evaluated from the
    call before, and returns the log-probability rows after each of its other tokens.

    The likeliest first token goes first, and within it the continuations in falling token
    order, so that a longer one is evaluated before those it serves ("Paris to Rome" serves
    "Paris to" and "Paris") and each is evaluated only past what it shares with the one before
    ("How do you say {text} in Spanish?" after "How do you say {text} tomorrow in Spanish?").
    A continuation scores at most its first token's log-probability, so with ``best_only`` the
    rest cannot win once that falls below the best (they score ``-inf``). ``best_only=k``, a
    number, keeps the ``k`` best exact in the same way.
    """
    import heapq

    import numpy as np

    evaluated: list[tuple[list[int], Any]] = []  # token paths and their log-prob rows

    def rows_of(path: list[int]) -> Any:
        for done, rows in evaluated:
            if done[: len(path)] == path:
                return rows
        shared = common_prefix(evaluated[-1][0], path) if evaluated else 0
        rows = rows_after(path, shared)
        if shared:  # the rows before are the last evaluated path's
            rows = np.concatenate([evaluated[-1][1][:shared], rows])
        evaluated.append((path, rows))
        return rows

    totals = [-math.inf] * len(continuations)
    keep = int(best_only)  # True: 1; False: all
    kept: list[float] = []  # the best totals so far, at most ``keep`` (a min-heap)
    order = sorted(
        sorted(range(len(continuations)), key=continuations.__getitem__, reverse=True),
        key=lambda i: -first[continuations[i][0]],
    )
    for i in order:
        continuation = continuations[i]
        total = float(first[continuation[0]])
        if keep and len(kept) == keep and total <= kept[0]:
            break
        if len(continuation) > 1:
            rows = rows_of(continuation[:-1])
            picked = rows[np.arange(len(continuation) - 1), continuation[1:]]
            total += float(picked.sum())
        totals[i] = total
        if keep:
            (heapq.heappush if len(kept) < keep else heapq.heappushpop)(kept, total)
    return totals


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many first tokens ``a`` and ``b`` share."""
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def log_softmax(rows: Any) -> Any:
    """Row-wise log-softmax of a (n, vocab) float array."""
    import numpy as np

    top = rows.max(axis=1, keepdims=True)
    return rows - (top + np.log(np.exp(rows - top).sum(axis=1, keepdims=True)))


def token_logprobs(rows: Any, targets: list[int], top: int) -> list[tuple[float, dict[int, float]]]:
    """Each target token's log-probability in its row of ``rows`` (log-softmax, (n, vocab)),
    with the ``top`` likeliest tokens of the row and theirs."""
    import numpy as np

    out: list[tuple[float, dict[int, float]]] = []
    for row, target in zip(rows, targets, strict=True):
        best: dict[int, float] = {}
        if top:
            ids = np.argpartition(-row, top - 1)[:top]
            best = {int(i): float(row[i]) for i in sorted(ids, key=lambda i: -row[i])}
        out.append((float(row[target]), best))
    return out


def scored_token(logits: Any, token: int, top: int) -> tuple[float, dict[int, float]]:
    """``token``'s log-probability under one position's raw ``logits`` (n_vocab,), and the
    ``top`` likeliest tokens there with theirs."""
    import numpy as np

    row = log_softmax(np.asarray(logits, dtype=np.float64)[None, :])
    return token_logprobs(row, [token], top)[0]
