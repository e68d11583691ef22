"""Custom tools on the default model: do calls parse, name the right tool, and carry the right
arguments? And do agents' final answers end without looping?

63 requests (``data/tool_requests.jsonl``: 53 over 9 typed tools, with ids, names, cities, dates,
numbers, enums and optional fields, and 10 that need no tool) run through four paths:
``bind_tools`` with ``tool_choice="any"`` and ``"auto"``, ``ReActAgent`` and LangChain's
``create_agent`` with ``call_tools_then_answer``. Each variant runs in its own process, side by
side with the others:

- ``langchain``: what a LangChain user would run on the same GGUF instead, langchain-community's
  ``ChatLlamaCpp`` with llama-cpp-python's ``chatml-function-calling`` format. Its
  ``bind_tools`` takes neither ``"any"`` nor ``"auto"``, so both ``bind`` paths bind the tools
  with ``tool_choice="auto"`` directly (the model picks a function or a message under a
  grammar), and ``create_agent`` runs as LangChain runs it, without hearthlm's middleware;
- ``copy``: this tree as shipped (the tool and its arguments chosen by likelihood);
- ``write``: this tree with ``tool_arguments="write"`` (strict grammar, free arguments);
- ``commit:REF``: hearthlm as of a commit of this repository (extracted with ``git archive``;
  a clone with its history), to measure a change against the code before it.

Metrics per path: ``parse`` (share of attempted calls that parse), ``tool_accuracy`` (gold tool
called), ``exact_args`` (arguments equal to the gold ones, defaults filled in), ``no_tool_rate``
(auto only: share of the 10 no-tool requests answered in text), ``looping_answers`` (agents: final
answers that repeat a phrase three times or hit their length cap) and ``seconds_per_request``.

    python benchmarks/bench_tools.py [--quick] [--save] [--threads N] [--variants langchain,copy]
        [--agent-requests N] [--max-new-tokens N] [--heldout] [--no-agents]

``--heldout`` runs a second set, written before any run on it: 34 requests over 7 other tools
(translation, calendar, stocks, music, recipes, restaurants, parcels), 6 of them needing no tool.
``--pairs`` runs a third, also written before any tuning on it: 44 requests over 8 tools that
each have two or more fields of one type (a room and a weekday, two currencies, two dates, a
person and a place, an old and a new file name, two languages, two cities), 4 needing no tool.
Besides the metrics above it reports ``swapped_fields``: the share of requests whose call puts
a field's gold value in another field (the day in the room field, the currencies reversed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).parent))

from _common import chat_options, emit, parser

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "tool_requests.jsonl"
PATHS = ("bind_any", "bind_auto", "react", "create_agent")
JOINT_PATHS = ("bind_any", "react", "create_agent")  # the paths the argument targets are on


# -- the tools (plain typed functions, as a user writes them) -----------------------------------


def order_status(order_id: str) -> str:
    """Look up the delivery status of an order by its id."""
    return f"Order {order_id} was delivered on Monday."


def cancel_order(order_id: str, reason: Literal["damaged", "late", "changed_mind"]) -> str:
    """Cancel an order by its id, giving the reason."""
    return f"Order {order_id} is cancelled ({reason})."


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
    """Get the current weather in a city."""
    return f"Sunny in {city}, 21 degrees {unit}."


def book_flight(origin: str, destination: str, date: str) -> str:
    """Book a flight from one city to another on a date written as YYYY-MM-DD."""
    return f"Booked {origin} to {destination} on {date}, seat 14C."


def convert_currency(
    amount: float,
    source: Literal["USD", "EUR", "GBP", "JPY"],
    target: Literal["USD", "EUR", "GBP", "JPY"],
) -> str:
    """Convert an amount of money from one currency to another."""
    return f"{amount} {source} is 1.1 times as many {target}."


def send_message(recipient: str, text: str) -> str:
    """Send a text message to a person."""
    return f"Sent to {recipient}."


def lookup_contact(name: str) -> str:
    """Find the phone number of a person in the contacts by name."""
    return f"{name}: +1 555 0100."


def set_alarm(time: str, label: str | None = None) -> str:
    """Set an alarm at a time written as HH:MM, with an optional label."""
    return f"Alarm set for {time}."


def city_population(city: str, year: int) -> str:
    """Get the population of a city in a given year."""
    return f"{city} had 2.1 million people in {year}."


# -- a held-out set: other tools and requests, written before any run on them, to check that
# the choices tuned on the set above (the channel prompt, the pass option) carry over.


def translate(text: str, language: Literal["french", "spanish", "german", "italian"]) -> str:
    """Translate a text into another language."""
    return f"({language}) {text}"


def create_event(title: str, date: str, time: str | None = None) -> str:
    """Create a calendar event with a title on a date written as YYYY-MM-DD, optionally at a
    time written as HH:MM."""
    return f"Created {title} on {date}."


def get_stock_price(ticker: str) -> str:
    """Get the current share price of a company by its stock ticker symbol."""
    return f"{ticker} trades at 187.20."


def play_song(title: str, artist: str | None = None) -> str:
    """Play a song by its title, optionally by a given artist."""
    return f"Playing {title}."


def search_recipes(ingredient: str, max_minutes: int | None = None) -> str:
    """Find cooking recipes that use an ingredient, optionally ready within some minutes."""
    return f"3 recipes with {ingredient}."


def reserve_table(restaurant: str, people: int, time: str) -> str:
    """Reserve a table at a restaurant for a number of people at a time written as HH:MM."""
    return f"Table for {people} at {restaurant}, {time}."


def track_package(tracking_number: str, carrier: Literal["ups", "fedex", "dhl"]) -> str:
    """Track a parcel by its tracking number with its carrier."""
    return f"{tracking_number} is out for delivery."


HELDOUT_TOOLS = [
    translate,
    create_event,
    get_stock_price,
    play_song,
    search_recipes,
    reserve_table,
    track_package,
]
HELDOUT_DATA = Path(__file__).parent / "data" / "tool_requests_heldout.jsonl"


# -- a third set, written before any tuning on it: every tool has two or more fields of one type
# (two strings, two currencies, two dates, a name and a place), so that a field filled with
# another field's value shows. Some tools describe their fields in an ``Args:`` section.


def book_room(room: str, weekday: str) -> str:
    """Book a meeting room by its name for a day of the week."""
    return f"{room} is booked on {weekday}."


def convert_money(amount: float, from_currency: str, to_currency: str) -> str:
    """Convert an amount of money from one currency into another.

    Args:
        amount: How much money to convert.
        from_currency: The three-letter code of the currency the money is in now.
        to_currency: The three-letter code of the currency wanted.
    """
    return f"{amount} {from_currency} is 1.3 times as many {to_currency}."


def meet_person(person: str, place: str) -> str:
    """Arrange a meeting with a person at a place."""
    return f"Meeting with {person} at {place} arranged."


def days_between(start_date: str, end_date: str) -> str:
    """Count the days from a start date to an end date, both written as YYYY-MM-DD."""
    return f"{start_date} to {end_date}: 44 days."


def rename_file(old_name: str, new_name: str) -> str:
    """Rename a file.

    Args:
        old_name: The file's current name.
        new_name: The name the file should have afterwards.
    """
    return f"{old_name} is now {new_name}."


def assign_task(task: str, assignee: str) -> str:
    """Assign a task to a member of the team."""
    return f"{assignee} now owns: {task}."


def translate_phrase(phrase: str, from_language: str, to_language: str) -> str:
    """Translate a phrase from one language into another.

    Args:
        phrase: The words to translate.
        from_language: The language the phrase is written in.
        to_language: The language to translate it into.
    """
    return f"({to_language}) {phrase}"


def ship_parcel(origin_city: str, destination_city: str, weight_kg: float) -> str:
    """Ship a parcel of some weight in kilograms from one city to another."""
    return f"{weight_kg} kg from {origin_city} to {destination_city}: 12 EUR."


PAIRS_TOOLS = [
    book_room,
    convert_money,
    meet_person,
    days_between,
    rename_file,
    assign_task,
    translate_phrase,
    ship_parcel,
]
PAIRS_DATA = Path(__file__).parent / "data" / "tool_requests_pairs.jsonl"

TOOLS = [
    order_status,
    cancel_order,
    get_weather,
    book_flight,
    convert_currency,
    send_message,
    lookup_contact,
    set_alarm,
    city_population,
]


def load_requests(quick: bool) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in DATA.open(encoding="utf-8")]
    if not quick:
        return rows
    per_tool: dict[Any, int] = {}
    picked = []
    for row in rows:  # two per tool, two without
        if per_tool.get(row["tool"], 0) < 2:
            per_tool[row["tool"]] = per_tool.get(row["tool"], 0) + 1
            picked.append(row)
    return picked


# -- the child: runs one variant, records raw outcomes -------------------------------------------


def agent_rows(rows: list[dict[str, Any]], per_tool: int) -> list[dict[str, Any]]:
    """The tool requests the agents run: the first ``per_tool`` of each tool (0: all)."""
    seen: dict[str, int] = {}
    picked = []
    for row in rows:
        if row["tool"] is not None and (not per_tool or seen.get(row["tool"], 0) < per_tool):
            seen[row["tool"]] = seen.get(row["tool"], 0) + 1
            picked.append(row)
    return picked


def run_variant(variant: str, rows: list[dict[str, Any]], args: Any) -> dict[str, Any]:
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage, HumanMessage

    from hearthlm.agents.middleware import call_tools_then_answer
    from hearthlm.agents.react import ReActAgent
    from hearthlm.llm import ChatHearth

    if variant == "langchain":
        from langchain_core.utils.function_calling import convert_to_openai_tool

        chat: Any = langchain_chat(args)
        # ChatLlamaCpp.bind_tools takes a tool's name for tool_choice, neither "any" nor
        # "auto", and without one llama-cpp-python leaves the tools out of the prompt: bound
        # here with "auto" (the model picks a function or a message, under a grammar).
        specs = [convert_to_openai_tool(t) for t in TOOLS]
        any_bound = auto_bound = chat.bind(tools=specs, tool_choice="auto")
        agent = create_agent(chat, tools=TOOLS)
    else:
        options: dict[str, Any] = {
            **chat_options(),
            "threads": args.threads,
            "max_new_tokens": args.max_new_tokens,
        }
        if not variant.startswith("commit:"):
            options["tool_arguments"] = variant
        chat = ChatHearth(**options).load()
        any_bound = chat.bind_tools(TOOLS, tool_choice="any")
        auto_bound = chat.bind_tools(TOOLS, tool_choice="auto")
        agent = create_agent(chat, tools=TOOLS, middleware=[call_tools_then_answer])
    records: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
    react = ReActAgent(chat, TOOLS)

    def reply_record(message: Any, seconds: float) -> dict[str, Any]:
        calls = [{"name": c["name"], "args": c["args"]} for c in message.tool_calls]
        return {
            "calls": calls,
            "invalid": len(message.invalid_tool_calls),
            "text": str(message.content),
            "seconds": seconds,
        }

    # One path at a time over every request: consecutive prompts then share their long tools
    # prefix, which llama.cpp keeps in its KV cache instead of evaluating it again.
    tool_rows = [row for row in rows if row["tool"] is not None]
    for path, bound, path_rows in (
        ("bind_any", any_bound, tool_rows),
        ("bind_auto", auto_bound, rows),
    ):
        for row in path_rows:
            start = time.perf_counter()
            message = bound.invoke(row["request"])
            records[path].append(reply_record(message, time.perf_counter() - start))
        print(f"{variant} {path} done", file=sys.stderr, flush=True)
    agents = [] if args.no_agents else agent_rows(rows, args.agent_requests)
    for row in agents:
        start = time.perf_counter()
        result = react.invoke(row["request"])
        steps = result.steps
        records["react"].append(
            {
                "calls": [{"name": s.tool, "args": s.tool_input} for s in steps[:1] if s.valid],
                "invalid": sum(not s.valid for s in steps),
                "attempts": len(steps),
                "answer": result.answer,
                "stopped": result.stopped_reason,
                "seconds": time.perf_counter() - start,
            }
        )
    print(f"{variant} react done", file=sys.stderr, flush=True)
    for i, row in enumerate(agents):
        start = time.perf_counter()
        try:
            state = agent.invoke(
                {"messages": [HumanMessage(row["request"])]}, config={"recursion_limit": 8}
            )
            ai = [m for m in state["messages"] if isinstance(m, AIMessage)]
            first, last = ai[0], ai[-1]
            record = reply_record(first, 0.0)
            record["answer"] = str(last.content) if not last.tool_calls else None
            record["finish"] = last.response_metadata.get("finish_reason")
        except Exception as exc:  # the baseline may fail; record it rather than stop the run
            record = {"calls": [], "invalid": 1, "answer": None, "error": repr(exc)[:300]}
        record["seconds"] = time.perf_counter() - start
        records["create_agent"].append(record)
        print(f"{variant} create_agent {i + 1}", file=sys.stderr, flush=True)
    return records


# -- the parent: scores each variant with the same code ------------------------------------------


def normalised(name: str, args: dict[str, Any]) -> Any:
    """Arguments with defaults filled in, as the tool itself would receive them."""
    from langchain_core.tools import StructuredTool

    tool = StructuredTool.from_function({t.__name__: t for t in TOOLS}[name])
    try:
        return tool.args_schema.model_validate(args).model_dump()  # type: ignore[union-attr]
    except Exception:  # a call the tool would reject matches nothing
        return None


def swaps(args: dict[str, Any], gold: dict[str, Any]) -> bool:
    """Whether a field of the call holds the gold value of another field (the day in the room
    field, the source currency in the target's)."""
    return any(
        field != other and value == gold[other] and gold.get(field) != value
        for field, value in args.items()
        for other in gold
    )


def loops(text: str | None) -> bool:
    from hearthlm.llm.text import ends_in_loop

    words = (text or "").split()
    return any(ends_in_loop(words[:end]) for end in range(1, len(words) + 1))


def score(
    records: dict[str, list[dict[str, Any]]], rows: list[dict[str, Any]], per_tool: int
) -> dict[str, Any]:
    tool_rows = [r for r in rows if r["tool"] is not None]
    out: dict[str, Any] = {}
    for path, recs in records.items():
        if not recs:  # a path not run (--no-agents)
            continue
        gold_rows = agent_rows(rows, per_tool) if path in ("react", "create_agent") else tool_rows
        if path == "bind_auto":
            pairs = list(zip(rows, recs, strict=True))
            no_tool = [rec for row, rec in pairs if row["tool"] is None]
            out[f"{path}_no_tool_rate"] = round(
                sum(not rec["calls"] and not rec["invalid"] for rec in no_tool) / len(no_tool), 3
            )
            recs = [rec for row, rec in pairs if row["tool"] is not None]
        attempts = sum(rec.get("attempts", len(rec["calls"]) + rec["invalid"]) for rec in recs)
        parsed = attempts - sum(rec["invalid"] for rec in recs)
        names = [
            bool(rec["calls"]) and rec["calls"][0]["name"] == row["tool"]
            for row, rec in zip(gold_rows, recs, strict=True)
        ]
        exact = [
            ok
            and normalised(row["tool"], rec["calls"][0]["args"])
            == normalised(row["tool"], row["args"])
            for ok, row, rec in zip(names, gold_rows, recs, strict=True)
        ]
        swapped = [
            ok and swaps(rec["calls"][0]["args"], row["args"])
            for ok, row, rec in zip(names, gold_rows, recs, strict=True)
        ]
        out[f"{path}_parse"] = round(parsed / attempts, 3) if attempts else 1.0
        out[f"{path}_tool_accuracy"] = round(sum(names) / len(recs), 3)
        out[f"{path}_exact_args"] = round(sum(exact) / len(recs), 3)
        out[f"{path}_swapped_fields"] = round(sum(swapped) / len(recs), 3)
        if path in ("react", "create_agent"):
            out[f"{path}_looping_answers"] = sum(
                loops(rec.get("answer")) or rec.get("finish") == "length" for rec in recs
            )
        every = records[path]
        out[f"{path}_seconds_per_request"] = round(sum(r["seconds"] for r in every) / len(every), 2)
    return out


def langchain_chat(args: Any) -> Any:
    """langchain-community's ChatLlamaCpp on the packaged GGUF, greedy, with llama-cpp-python's
    function-calling chat format: the tool calling LangChain itself offers for this model."""
    import os as _os

    from langchain_community.chat_models import ChatLlamaCpp

    from hearthlm.llm.sources import packaged_model_path

    return ChatLlamaCpp(
        model_path=str(packaged_model_path()),
        chat_format="chatml-function-calling",
        temperature=0.0,
        max_tokens=args.max_new_tokens,
        n_ctx=8192,
        n_threads=args.threads or _os.cpu_count(),
        verbose=False,
    )


def commit_tree(commit: str) -> Path:
    """hearthlm as of ``commit``, extracted from this repository's history."""
    folder = Path(tempfile.mkdtemp(prefix="bench-tools-commit-"))
    found = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True
    )
    if found.returncode != 0:
        raise SystemExit(
            f"commit {commit} is not in this clone (a shallow clone has no history): fetch it "
            "(git fetch --unshallow), or leave the commit: variant out."
        )
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "hearthlm"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def start_child(variant: str, args: Any) -> tuple[subprocess.Popen[str], Path]:
    """Start one variant in its own process; its progress goes to a log file beside the run."""
    source = commit_tree(variant.removeprefix("commit:")) if variant.startswith("commit:") else ROOT
    env = {**os.environ, "PYTHONPATH": str(source)}
    command = [sys.executable, __file__, "--child", variant]
    command += ["--quick"] * args.quick + (["--threads", str(args.threads)] if args.threads else [])
    command += ["--agent-requests", str(args.agent_requests)]
    command += ["--max-new-tokens", str(args.max_new_tokens)] + ["--heldout"] * args.heldout
    command += ["--pairs"] * args.pairs
    command += ["--no-agents"] * args.no_agents
    log = Path(tempfile.gettempdir()) / f"bench_tools_{variant.replace(':', '_')}.log"
    print(f"{variant}: progress in {log}", file=sys.stderr)
    with log.open("w") as err:
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=source
        )
    return child, log


def label(variant: str) -> str:
    """A variant's name in the figures: ``commit`` for ``commit:REF`` (the ref is recorded
    beside them)."""
    return "commit" if variant.startswith("commit:") else variant


def child_result(variant: str, child: subprocess.Popen[str], log: Path) -> dict[str, Any]:
    stdout, _ = child.communicate()
    if child.returncode:
        raise SystemExit(f"variant {variant} failed:\n{log.read_text()[-3000:]}")
    line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return result


def main() -> None:
    p = parser(__doc__ or "", threads=True)
    p.add_argument(
        "--variants",
        default="langchain,copy",
        help="comma-separated: langchain, copy, write, commit:REF",
    )
    p.add_argument(
        "--agent-requests",
        type=int,
        default=0,
        help="ReAct and create_agent run the first N requests of each tool (default 0: all)",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=512, help="cap on free-text replies, every variant"
    )
    p.add_argument(
        "--heldout",
        action="store_true",
        help="the held-out set (data/tool_requests_heldout.jsonl: 28 requests over 7 other "
        "tools, 6 that need none)",
    )
    p.add_argument(
        "--pairs",
        action="store_true",
        help="the same-type-fields set (data/tool_requests_pairs.jsonl: 40 requests over 8 "
        "tools with two or more fields of one type, 4 that need none)",
    )
    p.add_argument("--no-agents", action="store_true", help="run the bind_tools paths only")
    p.add_argument(
        "--tag", default="", help="appended to the saved result's name (results/<name>_<tag>.json)"
    )
    p.add_argument("--child", default=None, help=argparse_hidden())
    args = p.parse_args()
    global TOOLS, DATA
    if args.heldout:
        TOOLS, DATA = HELDOUT_TOOLS, HELDOUT_DATA
    elif args.pairs:
        TOOLS, DATA = PAIRS_TOOLS, PAIRS_DATA
    rows = load_requests(args.quick)
    if args.child:
        import hearthlm

        records = run_variant(args.child, rows, args)
        print("RESULT " + json.dumps({"records": records, "hearthlm": hearthlm.__file__}))
        return
    figures: dict[str, Any] = {
        "set": "heldout" if args.heldout else "pairs" if args.pairs else "main",
        "requests": len(rows),
        "tool_requests": sum(r["tool"] is not None for r in rows),
        "tools": len(TOOLS),
        "threads": args.threads or os.cpu_count(),
        "agent_requests": len(agent_rows(rows, args.agent_requests)),
        "max_new_tokens": args.max_new_tokens,
    }
    # The variants run side by side, one process each (pass --threads 1 to share two cores).
    variants = args.variants.split(",")
    commits = [v.removeprefix("commit:") for v in variants if v.startswith("commit:")]
    if len(commits) > 1:
        raise SystemExit("give one commit: variant at most")
    if commits:
        figures["commit"] = commits[0]
    children = {variant: start_child(variant, args) for variant in variants}
    raw = {}
    for variant in variants:
        raw[variant] = child_result(variant, *children[variant])["records"]
        for key, value in score(raw[variant], rows, args.agent_requests).items():
            figures[f"{label(variant)}_{key}"] = value
    if "copy" in raw and not args.no_agents and (args.heldout or args.pairs):
        figures["targets_met"] = {
            "exact_args_0.85": all(figures[f"copy_{p}_exact_args"] >= 0.85 for p in JOINT_PATHS),
            "swapped_fields_0.02": all(
                figures[f"copy_{p}_swapped_fields"] <= 0.02 for p in JOINT_PATHS
            ),
            "any_tool_accuracy_0.92": figures["copy_bind_any_tool_accuracy"] >= 0.92,
        }
        if commits:  # seconds per request against the code before the change
            figures["targets_met"]["seconds_1.3x"] = all(
                figures[f"copy_{p}_seconds_per_request"]
                <= 1.3 * figures[f"commit_{p}_seconds_per_request"]
                for p in JOINT_PATHS
            )
    elif "copy" in raw and not args.no_agents:
        figures["targets_met"] = {
            "parse_100": all(figures[f"copy_{p}_parse"] == 1.0 for p in PATHS),
            "any_tool_accuracy_0.9": figures["copy_bind_any_tool_accuracy"] >= 0.9,
            "exact_args_0.8": figures["copy_bind_any_exact_args"] >= 0.8,
            "no_looping_answers": figures["copy_react_looping_answers"] == 0
            and figures["copy_create_agent_looping_answers"] == 0,
        }
    if args.save:
        replies = Path(__file__).parent / "results" / f"{result_name(args)}_replies.json"
        replies.parent.mkdir(exist_ok=True)
        replies.write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")
    emit(result_name(args), figures, args.save)


def result_name(args: Any) -> str:
    """bench_tools, with _heldout or _pairs for the other sets, _bind for the bind_tools paths
    and the --tag."""
    kind = "_heldout" * args.heldout + "_pairs" * args.pairs
    return "bench_tools" + kind + "_bind" * args.no_agents + (f"_{args.tag}" if args.tag else "")


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
