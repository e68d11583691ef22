"""Tool calls chosen, not written: the small-model principle applied to the whole call.

Asked to open a call and write its name, the 135M model names the right tool for under half of
the requests; its greedy grammar-bound choice of an argument goes wrong in the same way (the
first token decides, so "Buenos" beats "Buenos Aires" and "USD" beats the currency the user
named). Scoring whole alternatives with the model's log-likelihood does much better:

- **The tool** is the one under whose description the request is most likely, a noisy-channel
  choice: ``log p(request | "Function: <name>: <description>\\nA user request that needs this
  function:")``, where the model can tell each token's share, the tokens of the request's
  values (names, numbers, codes, quoted text) counted at half weight: they say which values,
  more than which tool, and their likelihood under a description is mostly noise ("notes.txt"
  was likelier under a room-booking tool than under rename_file). When a call is optional, a
  pass "function" (answer directly) competes with the tools in the same way.
- **The arguments** are chosen together. Each required field's candidates (spans and numbers
  of the request, as in :mod:`hearthlm.llm.spans`, or its enum's values) are scored on their
  own right after ``"field":`` as the call's first argument, with the tools list (names, types,
  descriptions) in the prompt; the assignment with the highest total in which no two fields
  share words wins (branch and bound over each field's ranked candidates). Filled in order,
  the first field takes the best span even when it belongs to a later field ("Friday" as the
  room), and the later field gets what is left. A string field's best few spans are ranked
  again with a tenth of the score of the request with the span taken out ("How do you say
  {text} in German?"): by its own score the model takes the shortest span of a phrase
  ("thank you" of "thank you very much"), and the request reads as one only around a whole
  value. Spans made only of the tool's own framing
  words ("order", "room", "the") are not values; a span right after a word that names one
  field and not its twin ("from English", "the new name x.pdf") goes to that field; an enum
  value the request names in words wins over the model's prior; an optional field is
  included only when the model would go on to it rather than close the call.

Fields with no finite set of candidates (free text that fits no span, objects, arrays) are left
to the grammar, which then writes the call with every chosen field fixed.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from hearthlm.llm.spans import EDGE, copy_schema
from hearthlm.llm.tools import strict_schema

# (context, continuations) -> log-likelihood of each continuation after the context; only the
# highest is used, so a scorer may give -inf to those that cannot be highest.
Scorer = Callable[[str, Sequence[str]], list[float]]
# (context, continuations, k) -> log-likelihood of each continuation, exact for the k highest
# (0: for all) and -inf or exact for the rest.
Ranker = Callable[[str, Sequence[str], int], list[float]]
# (context, continuation) -> each token of the continuation, as text, with its log-probability.
TokenScorer = Callable[[str, str], list[tuple[str, float]]]

CHANNEL = "Function: {name}: {description}\nA user request that needs this function:"
CALL_CHANNEL = (
    "Function: {name}: {description}\nArguments: {arguments}\n"
    "A user request that needs this function:"
)
# Two tools whose scores are closer than this are told apart by their calls (choose_tool's
# call_of). Measured by the tool choice on bench_tools' three sets, the top two told apart
# within 1.0: 26 / 38 / 49 of 28 / 40 / 53 (held-out / pairs / main), against 26 / 36 / 49
# without; by the calls' scores alone, without the tools' own: 26 / 38 / 47.
CLOSE = 1.0
PASS_DESCRIPTION = "Answer the user directly without any function."
_FREE = object()  # a field whose value the grammar writes
# Candidates ranked per field at most in a joint assignment (each one more scoring call).
MAX_RANKED = 8
# The weight of a value's tokens in the tool choice. Measured by bench_tools on its three sets
# (tool accuracy, bind_tools "any", weights 1 / 0.75 / 0.5 / 0.25 / 0): 49 / 49 / 49 / 48 / 47
# of 53, 25 / 26 / 26 / 25 / 25 of 28, 33 / 34 / 36 / 34 / 31 of 40. Without the values at all
# the choice is worse: a currency code or a person's name does say something of the tool.
VALUE_WEIGHT = 0.5
# The weight of how a request reads with a string value taken out (:func:`_frame`) beside the
# value's own score.
FRAME_WEIGHT = 0.1
# A string field's candidates ranked again so (each one more continuation scored).
MAX_FRAMED = 5


def best_scorer(model: Any) -> Scorer:
    """The :data:`Scorer` of a model with ``loglikelihoods`` (ChatHearth): only the best
    alternative is scored exactly, which is all a choice needs."""
    return partial(model.loglikelihoods, best_only=True)


def ranker(model: Any) -> Ranker:
    """The :data:`Ranker` of a model with ``loglikelihoods`` (ChatHearth): a string field's
    best candidates are ranked with it in one call."""

    def rank(context: str, continuations: Sequence[str], k: int) -> list[float]:
        return list(model.loglikelihoods(context, continuations, best_only=k or False))

    return rank


def token_scorer(model: Any) -> TokenScorer | None:
    """The :data:`TokenScorer` of a ChatHearth (``engine`` and ``token_logprobs``); None for
    a model without them."""
    if not (hasattr(model, "token_logprobs") and hasattr(model, "engine")):
        return None

    def score(context: str, continuation: str) -> list[tuple[str, float]]:
        engine = model.engine
        head, tail = engine.tokenize(context), engine.tokenize(continuation)
        _, scored = model.token_logprobs([*head, *tail])
        pairs = zip(tail, scored[len(head) - 1 :], strict=True)
        return [(engine.decode([token]), logprob) for token, (logprob, _) in pairs]

    return score


def choose_tool(
    score: Scorer,
    tools: Sequence[dict[str, Any]],
    request: str,
    *,
    optional: bool,
    per_token: TokenScorer | None = None,
    call_of: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """The tool spec under which ``request`` is most likely, or None when a call is
    ``optional`` and answering directly is more likely than every tool. With ``per_token``,
    the tokens of the request's values count at :data:`VALUE_WEIGHT`. With ``call_of`` (the
    arguments a call of a tool would carry), two tools within :data:`CLOSE` of each other
    are told apart by their calls: each adds the request's log-likelihood under its call
    with those arguments (``book_room(room="report.pdf", weekday="new")`` explains "Give
    report.pdf the new name summary.pdf." worse than ``rename_file`` with both names)."""
    names = [t["function"]["name"] for t in tools]
    pass_name = next(n for n in ("respond", "reply", "answer_directly") if n not in names)
    entries = [(t["function"]["name"], t["function"].get("description") or "") for t in tools]
    if optional:
        entries.append((pass_name, PASS_DESCRIPTION))
    if len(entries) == 1:
        return tools[0]
    text = " " + request.strip()
    contexts = [CHANNEL.format(name=name, description=_one_line(d)) for name, d in entries]
    scores = None
    if per_token is not None:
        try:
            scores = [_weighted(per_token(context, text), text) for context in contexts]
        except NotImplementedError:  # a backend that scores totals only
            scores = None
    if scores is None:
        scores = [score(context, [text])[0] for context in contexts]
    best, second = sorted(range(len(entries)), key=lambda i: -scores[i])[:2]
    close = scores[best] - scores[second] < CLOSE and max(best, second) < len(tools)
    if call_of is not None and close:
        calls = {i: _call_score(score, tools[i], call_of(tools[i]), text) for i in (best, second)}
        best = max(calls, key=lambda i: scores[i] + calls[i])
    return tools[best] if best < len(tools) else None


def _call_score(score: Scorer, tool: dict[str, Any], arguments: dict[str, Any], text: str) -> float:
    """The log-likelihood of ``text`` (the request) under a call of ``tool`` with
    ``arguments``."""
    function = tool["function"]
    context = CALL_CHANNEL.format(
        name=function["name"],
        description=_one_line(function.get("description") or ""),
        arguments=json.dumps(arguments, ensure_ascii=False),
    )
    return score(context, [text])[0]


def _weighted(tokens: list[tuple[str, float]], text: str) -> float:
    """The sum of the tokens' log-probabilities, a value's tokens at :data:`VALUE_WEIGHT`."""
    inside = [False] * len(text)
    for start, end in value_spans(text):
        inside[start:end] = [True] * (end - start)
    total, at = 0.0, 0
    for piece, logprob in tokens:
        value = any(inside[at : at + len(piece)])
        total += logprob * (VALUE_WEIGHT if value else 1.0)
        at += len(piece)
    return total


_QUOTED = re.compile(r"""(?<!\w)(['"])(?=\S)(.+?)(?<=\S)\1(?!\w)""")


def value_spans(text: str) -> list[tuple[int, int]]:
    """Where ``text`` names values rather than says what it wants: quoted text, and words
    with a digit ("2025-12-01", "B-4471"), with punctuation inside ("notes.txt",
    "budget_v2") or capitalised inside a sentence (names: "Lisbon", "Dr. Kim"; "I" is not
    one). ``(start, end)`` character offsets, in order."""
    spans = [m.span() for m in _QUOTED.finditer(text)]
    sentence_start = True
    for match in re.finditer(r"\S+", text):
        word = match.group().rstrip(".,;:!?")
        core = word.strip("'\"()")
        name = not sentence_start and core[:1].isupper() and core != "I"
        code = any(c.isdigit() for c in core) or re.search(r"\w[._/-]\w", core) is not None
        if name or code:
            spans.append((match.start(), match.start() + len(word)))
        # "Dr. Kim": a title's dot ends no sentence
        sentence_start = match.group()[-1:] in ".!?" and not (len(core) == 2 and name)
    return sorted(spans)


def choose_call(
    score: Scorer,
    prompt: str,
    tool: dict[str, Any],
    texts: Sequence[str],
    rank: Ranker | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The arguments chosen for a call of ``tool`` written right after ``prompt``, and the
    tool's spec with them fixed (:func:`choose_arguments`), for :func:`call_schema`."""
    function = tool["function"]
    parameters = strict_schema(function.get("parameters") or {"type": "object"})
    opening = f'{prompt}{{"name": {json.dumps(function["name"])}, "arguments": {{'
    about = f"{function['name']}: {function.get('description') or ''}"
    chosen, fixed = choose_arguments(score, opening, parameters, texts, about, rank)
    return chosen, {"type": "function", "function": {**function, "parameters": fixed}}


def choose_arguments(
    score: Scorer,
    opening: str,
    parameters: dict[str, Any],
    texts: Sequence[str],
    about: str = "",
    rank: Ranker | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Values chosen for the top-level fields of ``parameters`` (a strict object schema) and
    the schema that fixes them, for the grammar to write the call.

    ``opening`` is the prompt up to the call's arguments object, ending in ``{``; ``texts`` are
    the texts that values are copied from; ``about`` is the tool's name and description (words
    that frame a request rather than give a value). With ``rank``, each required string
    field's best candidates are ranked again by their score plus how the request reads
    without them (:func:`_frame`). Returns ``(chosen, schema)``: ``chosen``
    holds the fields chosen here, and ``schema`` accepts exactly those values, drops the
    optional fields left out, and leaves the rest (free fields) as they were.
    """
    properties = parameters.get("properties")
    if parameters.get("type") != "object" or not isinstance(properties, dict):
        return {}, parameters
    narrowed = copy_schema(parameters, texts)["properties"]
    required = set(parameters.get("required", []))
    text = " ".join(texts)
    fields = list(properties)
    found = {f: _options(properties[f], narrowed[f], text) for f in fields}
    # Enum values the request names are taken first, in the order named ("EUR into USD"), so
    # that no span field takes their words ("thank you in German": the text is not "German").
    named: dict[str, Any] = {}
    for field in fields:
        left = [v for v in found[field][1] if v not in named.values()]
        if left:
            named[field] = left[0]
    # the values fixed before the walk: enum values named in words, then the joint assignment
    joint = _joint(score, opening, properties, found, named, required, about, text, rank)
    fixed = {**joint, **named}
    chosen: dict[str, Any] = {}
    omitted: set[str] = set()
    prefix = opening
    for field in fields:
        options, _ = found[field]
        optional = field not in required
        if options is _FREE:
            if optional and _kind(properties[field]) in ("string", "number"):
                omitted.add(field)  # nothing in the request fits: a value would be invented
            continue
        taken = [*chosen.values(), *(v for f, v in fixed.items() if f != field)]
        fresh = _unused(options, taken)
        first = prefix.endswith("{")
        kind = _kind(properties[field])
        if optional and field not in named and not _wanted(field, kind, fresh, text, taken):
            close, go = score(prefix, ["}", ' "' if first else ","])
            if close > go:
                omitted.add(field)
                continue
        prefix += f"{'' if first else ', '}{json.dumps(field)}:"
        if field in fixed:
            value = fixed[field]
        else:
            options = fresh or options
            after = "" if isinstance(options[0], str) else ("}" if field == fields[-1] else ",")
            scores = score(prefix, [_rendered(o, after) for o in options])
            value = options[max(range(len(options)), key=scores.__getitem__)]
        chosen[field] = value
        prefix += " " + json.dumps(value, ensure_ascii=False)
    schema = dict(parameters)
    schema["properties"] = {
        name: ({"const": chosen[name]} if name in chosen else node)
        for name, node in properties.items()
        if name not in omitted
    }
    schema["required"] = [n for n in fields if n in required or n in chosen]
    return chosen, schema


def _joint(
    score: Scorer,
    opening: str,
    properties: dict[str, Any],
    found: dict[str, tuple[Any, list[Any]]],
    named: dict[str, Any],
    required: set[str],
    about: str,
    request: str,
    rank: Ranker | None = None,
) -> dict[str, Any]:
    """Values for the required fields that have candidates and no named enum value, chosen
    together: each field's candidates are scored on their own, right after ``"field":`` as
    the call's first argument (the tools list in the prompt gives its type and description),
    and the assignment with the highest total in which no two fields share a value wins
    (:func:`assign`). Filled in order instead, a field whose best span belongs to a later
    field takes it ("Friday" as the room), and the later field gets what is left."""
    fields = [f for f in properties if f in required and f not in named]
    fields = [f for f in fields if found[f][0] is not _FREE]
    ranked = {}
    for field in fields:
        options = _values(found[field][0], field, properties, about)
        others = [v for f, v in named.items() if f != field]
        options = _unused(options, others) or options
        after = "" if isinstance(options[0], str) else ("}" if len(properties) == 1 else ",")
        alike = [
            f for f in fields if f != field and _kind(properties[f]) == _kind(properties[field])
        ]
        options = _cued(options, field, alike, request)
        context = f"{opening}{json.dumps(field)}:"
        if rank is not None and _kind(properties[field]) == "string":
            ranked[field] = _Ranked.scored(rank, context, options)
        else:
            ranked[field] = _Ranked.lazily(score, context, options, after)
    if rank is not None:  # after every field's own scores, which share the call's prompt
        strings = {f: r for f, r in ranked.items() if _kind(properties[f]) == "string"}
        _frame(rank, strings, about, request)
    chosen = assign(ranked)
    if len(chosen) < len(ranked):  # no assignment keeps the values apart: each takes its best
        chosen = {f: r.get(0)[1] for f, r in ranked.items()}  # type: ignore[index]
    return chosen


class _Ranked:
    """A field's candidates in falling order of score: those ranked so far, and where they come
    from next (:meth:`lazily`), or all of them at once (:meth:`scored`)."""

    def __init__(
        self,
        items: list[tuple[float, Any]],
        more: Callable[[], tuple[float, Any] | None] | None = None,
    ) -> None:
        self._items = items
        self._more = more

    @classmethod
    def lazily(cls, score: Scorer, context: str, options: list[Any], after: str) -> _Ranked:
        """``options`` ranked as they are asked for: the best is one call of a best-only
        scorer, each next one a further call without those already ranked."""
        left = list(options)

        def next_best() -> tuple[float, Any] | None:
            if not left:
                return None
            scores = score(context, [_rendered(o, after) for o in left])
            best = max(range(len(scores)), key=scores.__getitem__)
            return scores[best], left.pop(best)

        return cls([], next_best)

    @classmethod
    def scored(cls, rank: Ranker, context: str, options: list[Any]) -> _Ranked:
        """The :data:`MAX_FRAMED` best of ``options``, scored in one call of ``rank``."""
        scores = rank(context, [_rendered(o, "") for o in options], MAX_FRAMED)
        best = sorted(zip(scores, options, strict=True), key=lambda item: -item[0])
        return cls(best[:MAX_FRAMED])

    def get(self, index: int) -> tuple[float, Any] | None:
        """The ``index``-th best ``(score, value)``, or None past the last (or past
        :data:`MAX_RANKED`)."""
        while len(self._items) <= index < MAX_RANKED and self._more is not None:
            item = self._more()
            if item is None:
                self._more = None
            else:
                self._items.append(item)
        return self._items[index] if index < len(self._items) else None

    def values(self) -> list[Any]:
        """The candidates ranked so far, best first."""
        return [value for _, value in self._items]

    def add(self, extra: list[float]) -> None:
        """Rank the candidates so far again with ``extra`` (one score each) added; no more
        are ranked after them."""
        items = [(s + e, v) for (s, v), e in zip(self._items, extra, strict=True)]
        self._items = sorted(items, key=lambda item: -item[0])
        self._more = None


def _frame(rank: Ranker, ranked: dict[str, _Ranked], about: str, text: str) -> None:
    """Rank each string field's candidates again with how well ``text`` reads with the value
    replaced by ``{field}``, under the tool's description, at :data:`FRAME_WEIGHT`: around a
    whole value the rest is a request ("How do you say {text} in German?"), around part of one
    it is not ("How do you say {text} very much in German?"). Alone, the model prefers the
    shortest span of a phrase. One call scores every field's frames; a value is taken out
    without its edge punctuation, so that "Krakow," and "Krakow" read the same and their own
    scores decide; a value that ``text`` does not hold as words scores as the worst of its
    field's that it does."""
    name, _, description = about.partition(": ")
    context = CHANNEL.format(name=name, description=_one_line(description))
    frames: dict[tuple[str, int], str] = {}
    for field, candidates in ranked.items():
        for i, value in enumerate(candidates.values()):
            core = str(value).strip(EDGE) or str(value)  # "Krakow," reads as "Krakow"
            found = re.search(rf"(?<!\w){re.escape(core)}(?!\w)", text)
            if found is not None:
                frames[field, i] = f" {text[: found.start()]}{{{field}}}{text[found.end() :]}"
    if not frames:
        return
    scores = dict(zip(frames, rank(context, [f.rstrip() for f in frames.values()], 0), strict=True))
    for field, candidates in ranked.items():
        count = len(candidates.values())
        own = {i: scores[field, i] for i in range(count) if (field, i) in scores}
        worst = min(own.values(), default=0.0)
        candidates.add([FRAME_WEIGHT * own.get(i, worst) for i in range(count)])


def _cued(options: list[Any], field: str, others: list[str], text: str) -> list[Any]:
    """The spans among ``options`` that ``text`` puts right after the word that tells
    ``field`` from its twin among ``others`` (fields of its kind whose names share a word):
    "from" of from_language and to_language, "new" of new_name and old_name ("from English",
    "the new name summary.pdf"); else all of them. At the call's first argument the model
    often prefers the same span for both twins; the request's wording says which is which.
    "into", "onto" and "in" count as "to" ("120 NOK in DKK", "say it in Italian")."""
    twins = [f for f in others if _words(f) & _words(field)]
    own = _words(field) - {w for f in twins for w in _words(f)}
    shared = _words(field) - own
    if not own or not twins:
        return options
    cue = "|".join(("(?:in|on)?to|in" if w == "to" else re.escape(w)) for w in sorted(own))
    between = "".join(rf"(?:{re.escape(w)}\s+)?" for w in sorted(shared))
    cued = [
        o
        for o in options
        if isinstance(o, str)
        and re.search(rf"(?<!\w)(?:{cue})\s+{between}[\"']?{re.escape(o)}(?!\w)", text, re.I)
    ]
    return cued or options


def assign(ranked: dict[str, _Ranked]) -> dict[str, Any]:
    """The values of highest total score, one per field of ``ranked``, no two of which clash
    (the same value, or one holding the other's words), by branch and bound over each field's
    ranked candidates; {} when no such assignment exists among them."""
    fields = list(ranked)
    tops = [item[0] if (item := ranked[f].get(0)) else -math.inf for f in fields]
    best: dict[str, Any] = {}
    best_total = -math.inf

    def search(i: int, partial: dict[str, Any], total: float) -> None:
        nonlocal best, best_total
        if i == len(fields):
            if total > best_total:
                best, best_total = dict(partial), total
            return
        rest = sum(tops[i + 1 :])
        bound = tops[i]  # each candidate scores at most the one before it
        for k in itertools.count():
            if total + bound + rest <= best_total or (item := ranked[fields[i]].get(k)) is None:
                return  # none further down can win: not scored
            value_score, value = item
            bound = value_score
            if not any(_clash(value, other) for other in partial.values()):
                partial[fields[i]] = value
                search(i + 1, partial, total + value_score)
                del partial[fields[i]]

    search(0, {}, 0.0)
    return best


def _clash(a: Any, b: Any) -> bool:
    """Whether two fields' values would use the same words of the request (120 and "120")."""
    a, b = (json.dumps(v) if isinstance(v, int | float) else v for v in (a, b))
    if a == b:
        return True
    return isinstance(a, str) and isinstance(b, str) and (_holds(a, [b]) or _holds(b, [a]))


def _values(options: list[Any], field: str, properties: dict[str, Any], about: str) -> list[Any]:
    """``options`` without the spans that are only framing words: words of the tool's name and
    description and of the fields' names and descriptions ("order", "room", "number", "the"),
    which a request uses to say what it wants, not as a value, unless ``field``'s description
    quotes them as values. Spans with a digit are values. All of them when every span is
    framing."""
    frame = _words(about) | {w for f in properties for w in _words(f)}
    described = {f: str(_non_null(node).get("description", "")) for f, node in properties.items()}
    frame |= {w for text in described.values() for w in _words(text)}
    frame -= {
        w
        for quoted in re.findall(r"'([^']+)'|\"([^\"]+)\"", described[field])
        for w in _words("".join(quoted))
    }
    kept = [
        o
        for o in options
        if not isinstance(o, str) or any(c.isdigit() for c in o) or not _words(o) <= frame
    ]
    return kept or options


def _words(text: str) -> set[str]:
    return {w for w in re.split(r"[^\w']+|_", text.lower()) if w}


def _rendered(option: Any, after: str) -> str:
    return " " + json.dumps(option, ensure_ascii=False) + after


def mentions(value: str, text: str) -> int | None:
    """Where ``text`` names the enum ``value`` in words ("changed_mind" in "I changed my mind",
    "fahrenheit" in "in Fahrenheit?"): the position of its first word, or None."""
    words = [w for w in re.split(r"[\s_\-]+", value.lower()) if w]
    if not words:
        return None
    positions = []
    for word in words:
        found = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text.lower())
        if found is None:
            return None
        positions.append(found.start())
    return min(positions)


def _names_field(field: str, text: str) -> bool:
    """Whether ``text`` names ``field`` ("with the label gym", "labelled medicine"): a user who
    gives an optional argument tends to name it, where the model's prior is to leave it out."""
    words = [w for w in re.split(r"[\s_\-]+", field.lower()) if len(w) >= 3]
    return bool(words) and all(re.search(rf"(?<!\w){re.escape(w)}", text.lower()) for w in words)


def _options(
    original: dict[str, Any], narrowed: dict[str, Any], text: str
) -> tuple[Any, list[Any]]:
    """The candidate values of one field (or ``_FREE``), and those of its enum that ``text``
    names, in the order it names them."""
    node = _non_null(original)
    narrowed = _non_null(narrowed)
    if "const" in node:
        return [node["const"]], [node["const"]]
    if "enum" in node:
        values = list(node["enum"])
        named = [(mentions(v, text), v) for v in values if isinstance(v, str)]
        ordered = [v for at, v in sorted((p, v) for p, v in named if p is not None)]
        return values, ordered
    if node.get("type") == "boolean":
        return [True, False], []
    if "enum" in narrowed and node.get("type") in ("string", "integer", "number"):
        return list(narrowed["enum"]), []
    return _FREE, []


def _non_null(node: dict[str, Any]) -> dict[str, Any]:
    """``X`` of an ``anyOf: [X, null]`` (an optional field), else the node itself."""
    branches = node.get("anyOf")
    if isinstance(branches, list):
        kept = [b for b in branches if b.get("type") != "null"]
        if len(kept) == 1:
            return {**kept[0], **{k: v for k, v in node.items() if k != "anyOf"}}
    return node


def _unused(options: list[Any], used: list[Any]) -> list[Any]:
    """The options that no other field took, nor that hold a value another field took, in any
    case (the request's words go to one argument each); may be empty."""
    taken = [u.replace("_", " ") for u in used if isinstance(u, str)]
    return [o for o in options if o not in used and not _holds(o, taken)]


def _holds(option: Any, taken: list[str]) -> bool:
    return isinstance(option, str) and any(
        re.search(rf"(?<!\w){re.escape(t)}(?!\w)", option, re.IGNORECASE) for t in taken
    )


def _kind(node: dict[str, Any]) -> str:
    """ "enum" (the schema's own values), "number" or "string" (copied), else "other"."""
    node = _non_null(node)
    if {"enum", "const"} & node.keys() or node.get("type") == "boolean":
        return "enum"
    return {"integer": "number", "number": "number", "string": "string"}.get(
        node.get("type", ""), "other"
    )


def _wanted(field: str, kind: str, fresh: list[Any], text: str, taken: list[Any]) -> bool:
    """Whether the request gives an optional field without the model's say: it names the
    field, or holds a number that no other field took (a number field), or a value (a name, a
    code, quoted text: :func:`value_spans`) that no other field took (a string field)."""
    if _names_field(field, text):
        return True
    if kind == "number":
        return bool(fresh)
    if kind != "string":
        return False
    used = " ".join(str(t) for t in taken).lower()
    return any(text[a:b].lower().strip("'\"") not in used for a, b in value_spans(text))


def _one_line(text: str) -> str:
    return " ".join(text.split())
