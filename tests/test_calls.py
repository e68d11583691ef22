"""Tool calls chosen by likelihood (hearthlm.llm.calls): the tool among many, enum values the
request names, optional fields, and the schema the grammar then writes."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Literal

import jsonschema
from langchain_core.utils.function_calling import convert_to_openai_tool

from hearthlm.llm.calls import Ranker, choose_arguments, choose_tool, mentions, value_spans
from hearthlm.llm.spans import text_spans
from hearthlm.llm.tools import strict_schema


def order_status(order_id: str) -> str:
    """Look up the delivery status of an order by its id."""
    return f"Order {order_id} was delivered on Monday."


def book_flight(origin: str, destination: str, date: str) -> str:
    """Book a flight from one city to another on a date written as YYYY-MM-DD."""
    return f"Booked {origin} to {destination} on {date}."


def convert_currency(
    amount: float,
    source: Literal["USD", "EUR", "GBP", "JPY"],
    target: Literal["USD", "EUR", "GBP", "JPY"],
) -> str:
    """Convert an amount of money from one currency to another."""
    return f"{amount} {source} in {target}."


def set_alarm(time: str, label: str | None = None) -> str:
    """Set an alarm at a time written as HH:MM, with an optional label."""
    return f"Alarm set for {time}."


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"Sunny in {city}."


TOOLS = [order_status, book_flight, convert_currency, set_alarm, get_weather]


def test_enum_values_are_found_in_the_words_of_a_request():
    assert mentions("changed_mind", "I changed my mind, cancel it") is not None
    assert mentions("fahrenheit", "How hot is it, in Fahrenheit?") is not None
    assert mentions("EUR", "Change 1200 EUR into USD") < mentions("USD", "Change 1200 EUR into USD")
    assert mentions("late", "it is later than planned") is None


def test_copied_spans_do_not_cut_an_expression_short():
    spans = set(text_spans(["What is 1234 * 5678?", "Compute (12 + 30) / 7 for me."]))
    assert {"1234 * 5678", "(12 + 30) / 7"} <= spans
    assert not {"1234", "5678", "12 + 30", "12 + 30) / 7", "* 5678"} & spans


def _prefers_short(context: str, continuations: Sequence[str]) -> list[float]:
    """A scorer standing in for the model where only the control flow is under test: shorter
    text is likelier, and closing an object is likelier than going on."""
    return [-len(c) - (0.0 if c == "}" else 0.5) for c in continuations]


def test_named_values_win_no_value_is_used_twice_and_free_fields_stay_free():
    schema = strict_schema(
        {
            "type": "object",
            "properties": {
                "source": {"enum": ["USD", "EUR"]},
                "target": {"enum": ["USD", "EUR"]},
                "origin": {"type": "string"},
                "destination": {"type": "string"},
                "note": {"type": "string", "format": "date"},  # no span fits: the grammar writes
                "label": {"type": "string"},  # optional
                "minutes": {"type": "integer"},  # optional: no number in the request
            },
            "required": ["source", "target", "origin", "destination", "note"],
        }
    )
    request = "Change EUR into USD and fly from rome to oslo"
    chosen, fixed = choose_arguments(_prefers_short, "{", schema, [request])
    assert chosen["source"] == "EUR" and chosen["target"] == "USD"  # in the order named
    assert chosen["origin"] != chosen["destination"]
    assert "note" not in chosen and fixed["properties"]["note"] == schema["properties"]["note"]
    assert "label" not in fixed["properties"]  # the scorer would rather close the call
    assert "minutes" not in fixed["properties"]  # nothing to copy: not invented
    jsonschema.validate({**chosen, "note": "2025-01-01"}, fixed)
    # a name no other field took, or a number, is the request giving an optional field
    chosen, _ = choose_arguments(_prefers_short, "{", schema, [request + " for Maria, 20 minutes"])
    assert chosen["minutes"] == 20 and "label" in chosen


def test_a_tool_is_chosen_among_many_and_its_arguments_are_the_requests(llama_chat):
    bound = llama_chat.bind_tools(TOOLS, tool_choice="any")
    expected = {
        "Book a flight from Paris to Rome on 2025-06-12.": (
            "book_flight",
            {"origin": "Paris", "destination": "Rome", "date": "2025-06-12"},
        ),
        "Change 1200 EUR into USD.": (
            "convert_currency",
            {"amount": 1200, "source": "EUR", "target": "USD"},
        ),
        "Set an alarm at 22:00 labelled medicine.": (
            "set_alarm",
            {"time": "22:00", "label": "medicine"},
        ),
        "Set an alarm for 07:30.": ("set_alarm", {"time": "07:30"}),
    }
    for request, (name, args) in expected.items():
        reply = bound.invoke(request)
        assert reply.invalid_tool_calls == []
        assert (reply.tool_calls[0]["name"], reply.tool_calls[0]["args"]) == (name, args), request
        assert reply.response_metadata["finish_reason"] == "tool_calls"


def test_auto_answers_small_talk_in_text_and_calls_for_a_task(llama_chat):
    bound = llama_chat.bind_tools(TOOLS, tool_choice="auto")
    joke = bound.invoke("Tell me a joke.")
    assert joke.tool_calls == [] and joke.content.strip()
    weather = bound.invoke("Is it raining in Tokyo right now?")
    assert weather.tool_calls[0]["name"] == "get_weather"
    assert weather.tool_calls[0]["args"] == {"city": "Tokyo"}


def test_a_streamed_call_is_the_invoked_call(llama_chat):
    bound = llama_chat.bind_tools(TOOLS, tool_choice="any")
    request = "Where is my order B-4471?"
    streamed = None
    for chunk in bound.stream(request):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None
    assert streamed.tool_calls[0]["args"] == bound.invoke(request).tool_calls[0]["args"]
    assert streamed.tool_calls[0]["args"] == {"order_id": "B-4471"}


def test_structured_output_chooses_an_enum_the_request_names(llama_chat):
    schema = convert_to_openai_tool(convert_currency)["function"]["parameters"]
    schema = {"title": "Conversion", **schema}
    found = llama_chat.with_structured_output(schema).invoke("What is 99.5 EUR in GBP?")
    assert found == {"amount": 99.5, "source": "EUR", "target": "GBP"}


def book_room(room: str, weekday: str) -> str:
    """Book a meeting room by its name for a day of the week."""
    return f"{room} is booked on {weekday}."


def rename_file(old_name: str, new_name: str) -> str:
    """Rename a file."""
    return f"{old_name} is now {new_name}."


def exchange_money(amount: float, from_currency: str, to_currency: str) -> str:
    """Exchange money between two currencies."""
    return f"{amount} {from_currency} in {to_currency}."


def _parameters(tool: object) -> dict:
    return strict_schema(convert_to_openai_tool(tool)["function"]["parameters"])


def _scripted(table: dict[str, dict[str, float]]) -> Callable[[str, Sequence[str]], list[float]]:
    """A scorer that gives each ``"field": value`` the score in ``table`` (-20 for the rest),
    whatever came before the field: only the assignment's control flow is under test."""

    def score(context: str, continuations: Sequence[str]) -> list[float]:
        field = context.rsplit('"', 2)[-2] if context.endswith(":") else ""
        values = table.get(field, {})
        return [values.get(str(json.loads(c.strip().rstrip(",}"))), -20.0) for c in continuations]

    return score


def test_arguments_are_assigned_jointly_where_filling_in_order_goes_wrong():
    # "Friday" is the room field's best span by a little and the weekday's by a lot: filled
    # in order, the room takes it and the weekday gets the room's name.
    table = {
        "room": {"Friday": -2.0, "Willow": -2.5},
        "weekday": {"Friday": -1.0, "Willow": -9.0, "Book": -8.0},
    }
    request = "Book the Willow room for Friday."
    chosen, fixed = choose_arguments(_scripted(table), "{", _parameters(book_room), [request])
    assert chosen == {"room": "Willow", "weekday": "Friday"}
    assert fixed["properties"]["room"] == {"const": "Willow"}
    # each field alone would take "Friday": greedy in-order filling gives the room the day
    greedy_room = max(table["room"], key=table["room"].__getitem__)
    assert greedy_room == "Friday"


def test_framing_words_and_a_field_named_before_its_span_steer_the_assignment():
    # The scorer likes the request's framing word "meeting" and the later currency for both
    # fields; neither decides: "meeting" is a word of the tool's description, not a value,
    # and "from MXN" names the twin field it goes to.
    table = {
        "room": {"meeting": -0.5, "Willow": -3.0, "Friday": -4.0},
        "weekday": {"Friday": -1.0},
    }
    request = "Book the Willow meeting room for Friday."
    about = f"book_room: {book_room.__doc__}"
    chosen, _ = choose_arguments(_scripted(table), "{", _parameters(book_room), [request], about)
    assert chosen == {"room": "Willow", "weekday": "Friday"}
    table = {
        "from_currency": {"ZAR": -1.0, "MXN": -3.0},  # together, ZAR into MXN scores higher
        "to_currency": {"ZAR": -1.5, "MXN": -2.0},
        "amount": {"40": -0.1},
    }
    chosen, _ = choose_arguments(
        _scripted(table), "{", _parameters(exchange_money), ["From MXN to ZAR, convert 40."]
    )
    assert chosen == {"amount": 40, "from_currency": "MXN", "to_currency": "ZAR"}


def test_two_string_fields_asked_in_the_reverse_order_both_come_out_right(llama_chat):
    bound = llama_chat.bind_tools([book_room, order_status, get_weather], tool_choice="any")
    for request, args in {
        "On Tuesday I need Aurora, can you book it?": {"room": "Aurora", "weekday": "Tuesday"},
        "For Thursday, book Orion.": {"room": "Orion", "weekday": "Thursday"},
    }.items():
        reply = bound.invoke(request)
        assert reply.tool_calls[0]["name"] == "book_room", request
        assert reply.tool_calls[0]["args"] == args, request


def test_a_conversion_goes_the_way_the_request_says(llama_chat):
    bound = llama_chat.bind_tools([exchange_money], tool_choice="any")
    for request, (source, target) in {
        "Convert 50 CHF into SEK.": ("CHF", "SEK"),
        "Change 75 AUD to CAD, from AUD to CAD.": ("AUD", "CAD"),
        "From MXN to ZAR, convert 40.": ("MXN", "ZAR"),
        "How much is 120 NOK in DKK?": ("NOK", "DKK"),
    }.items():
        args = bound.invoke(request).tool_calls[0]["args"]
        assert (args["from_currency"], args["to_currency"]) == (source, target), request


def translate_phrase(phrase: str, from_language: str, to_language: str) -> str:
    """Translate a phrase from one language into another.

    Args:
        phrase: The words to translate.
        from_language: The language the phrase is written in.
        to_language: The language to translate it into.
    """
    return f"({to_language}) {phrase}"


def translate(text: str, language: Literal["german", "spanish"]) -> str:
    """Translate a text into another language."""
    return f"({language}) {text}"


def _scripted_rank(table: dict[str, dict[str, float]], frames: dict[str, float]) -> Ranker:
    """A :data:`Ranker` scripted as :func:`_scripted` is, that scores a request with a value
    taken out by ``frames`` (-60 for the rest)."""
    score = _scripted(table)

    def rank(context: str, continuations: Sequence[str], k: int) -> list[float]:
        if context.startswith("Function:"):
            return [frames.get(c.strip(), -60.0) for c in continuations]
        return score(context, continuations)

    return rank


def test_a_phrase_is_taken_whole_where_its_own_score_alone_cuts_it_short():
    # The model alone likes "thank you" a little more than "thank you very much" as the text,
    # as it likes the shorter span of most phrases; the request reads as one only around the
    # whole phrase.
    table = {"text": {"thank you": -14.7, "thank you very much": -16.2, "you": -15.0}}
    frames = {
        "How do you say {text} in German?": -20.0,
        "How do you say {text} very much in German?": -38.0,
    }
    request = "How do you say thank you very much in German?"
    about = f"translate: {translate.__doc__}"
    rank = _scripted_rank(table, frames)
    chosen, _ = choose_arguments(
        _scripted(table), "{", _parameters(translate), [request], about, rank
    )
    assert chosen == {"text": "thank you very much", "language": "german"}
    chosen, _ = choose_arguments(_scripted(table), "{", _parameters(translate), [request], about)
    assert chosen["text"] == "thank you"  # each span by its own score


def test_a_phrase_to_translate_is_copied_whole(llama_chat):
    # By each span's own score the model took "see you" of "see you tomorrow".
    bound = llama_chat.bind_tools([translate, get_weather], tool_choice="any")
    reply = bound.invoke("How do you say see you tomorrow in Spanish?")
    assert reply.tool_calls[0]["name"] == "translate"
    assert reply.tool_calls[0]["args"] == {"text": "see you tomorrow", "language": "spanish"}


def test_values_are_names_codes_and_quoted_text_not_the_words_around_them():
    def values(text: str) -> list[str]:
        return [text[a:b] for a, b in value_spans(text)]

    assert values("Rename notes.txt to ideas.txt.") == ["notes.txt", "ideas.txt"]
    assert values("Arrange to meet Dr. Kim in Lisbon.") == ["Dr", "Kim", "Lisbon"]
    assert values("I want to turn 300 INR into BRL. Thanks!") == ["300", "INR", "BRL"]
    assert values("Please put Jonas on 'review the contract'.") == [
        "Jonas",
        "'review the contract'",
    ]
    assert values("Put Anna's birthday in the calendar on 2025-12-01.") == [
        "Anna's",
        "2025-12-01",
    ]
    assert values("Book a room. Tomorrow I fly.") == []  # sentences open with capitals


def test_a_value_the_tool_s_description_happens_to_favour_counts_half_in_the_choice():
    """The request's framing fits rename_file; its two file names are likelier under the
    room-booking description (by 5.6 nats here, as the packaged model scored them), which
    decided the choice when every token counted fully."""
    request = " Rename notes.txt to ideas.txt."
    pieces = [" R", "ename", " notes", ".", "txt", " to", " ideas", ".", "txt", "."]
    scores = {
        "book_room": [-8.2, -1.5, -10.7, -2.3, -3.6, -0.2, -9.8, -0.1, -0.3, -0.8],
        "rename_file": [-5.8, -0.1, -13.2, -1.8, -3.6, -0.4, -12.9, -0.1, -1.0, -0.6],
    }
    per_tool = {name: list(zip(pieces, lps, strict=True)) for name, lps in scores.items()}
    assert "".join(p for p, _ in per_tool["book_room"]) == request

    def per_token(context: str, continuation: str) -> list[tuple[str, float]]:
        assert continuation == request
        return per_tool[context.split(":")[1].strip()]

    def totals(context: str, continuations: Sequence[str]) -> list[float]:
        return [sum(lp for _, lp in per_token(context, c)) for c in continuations]

    tools = [convert_to_openai_tool(t) for t in (book_room, rename_file)]
    assert choose_tool(totals, tools, request, optional=False)["function"]["name"] == "book_room"
    chosen = choose_tool(totals, tools, request, optional=False, per_token=per_token)
    assert chosen["function"]["name"] == "rename_file"


def test_two_close_tools_are_told_apart_by_their_calls():
    """By the request alone book_room leads rename_file by a little; a call of book_room can
    only carry "report.pdf" and the filler "new", while rename_file's carries both names, and
    the request is far likelier under it. A clear lead is not second-guessed."""
    request = "Give report.pdf the new name summary.pdf."
    alone = {"book_room": -30.0, "rename_file": -30.9}
    with_call = {"book_room": -48.9, "rename_file": -34.1}
    asked: list[str] = []

    def totals(context: str, continuations: Sequence[str]) -> list[float]:
        name = context.split(":")[1].strip()
        table = with_call if "\nArguments: " in context else alone
        return [table[name] for _ in continuations]

    def call_of(tool: dict) -> dict:
        asked.append(tool["function"]["name"])
        return {"room": "report.pdf", "weekday": "new"}  # what each call carries is not read

    tools = [convert_to_openai_tool(t) for t in (book_room, rename_file)]
    assert choose_tool(totals, tools, request, optional=False)["function"]["name"] == "book_room"
    chosen = choose_tool(totals, tools, request, optional=False, call_of=call_of)
    assert chosen["function"]["name"] == "rename_file"
    assert sorted(asked) == ["book_room", "rename_file"]
    asked.clear()
    alone["rename_file"] = -32.0  # two nats behind: the request alone decides
    chosen = choose_tool(totals, tools, request, optional=False, call_of=call_of)
    assert chosen["function"]["name"] == "book_room" and asked == []


def test_the_language_said_with_in_is_the_one_translated_into(llama_chat):
    # "in Dutch" is where the phrase goes; "It is Danish" what it is now. Without "in" as a
    # cue for to_language the model took them the other way round.
    bound = llama_chat.bind_tools([translate_phrase, book_room], tool_choice="any")
    reply = bound.invoke("How do you say 'thank you' in Dutch? It is Danish.")
    assert reply.tool_calls[0]["name"] == "translate_phrase"
    assert reply.tool_calls[0]["args"] == {
        "phrase": "thank you",
        "from_language": "Danish",
        "to_language": "Dutch",
    }
