"""``make demo``: the main job on the embedded defaults, offline."""

from __future__ import annotations

from langchain_core.tools import tool
from rich.console import Console

from hearthlm.config import HearthConfig
from hearthlm.llm import ChatHearth


@tool
def get_weather(city: str, unit: str = "celsius") -> str:
    """Get the current weather in a city."""
    return f"It is 21 degrees {unit} and sunny in {city}."


def run_demo(config: HearthConfig, console: Console) -> None:
    """Answer one question (streamed), then make one schema-valid tool call and run the tool."""
    chat = ChatHearth.from_config(config).model_copy(update={"max_new_tokens": 64})
    question = "What is the capital of France?"
    console.print(f"[bold]Question:[/bold] {question}")
    console.print("[bold]Answer:[/bold] ", end="")
    for chunk in chat.stream(question):
        console.print(chunk.content, end="", highlight=False)
    console.print()

    request = "What's the weather like in Lisbon?"
    reply = chat.bind_tools([get_weather], tool_choice="get_weather").invoke(request)
    call = reply.tool_calls[0]
    console.print(f"[bold]Request:[/bold] {request}")
    console.print(f"[bold]Tool call:[/bold] {call['name']}({call['args']})")
    console.print(f"[bold]Tool result:[/bold] {get_weather.invoke(call['args'])}")
    usage = dict(reply.usage_metadata or {})
    console.print(
        f"[dim]{reply.response_metadata['model_name']} on {reply.response_metadata['backend']}, "
        f"{usage.get('input_tokens')} prompt + {usage.get('output_tokens')} reply tokens[/dim]"
    )
