"""A function-calling sample set built offline: travel questions answered by a call to one of four
declared functions, with the arguments taken from the question (OpenAI fine-tuning rows with
`tools` and an assistant `tool_calls` turn). Seeded, so a split of it is reproducible; what the
tool-calling fine-tune, its evaluation (`tool_call_accuracy`) and the demo use.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

CITIES = [
    "Lisbon",
    "Porto",
    "Kyoto",
    "Oslo",
    "Rome",
    "Paris",
    "Vienna",
    "Prague",
    "Lima",
    "Cairo",
    "Hanoi",
    "Quito",
    "Dublin",
    "Madrid",
    "Seoul",
    "Tunis",
]
CURRENCIES = ["EUR", "USD", "JPY", "GBP", "CHF", "NOK"]
SYSTEM = "You are a travel assistant. Use the tools when a question needs live data."


def _function(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    parameters = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


TOOLS = [
    _function(
        "get_weather",
        "Current weather in a city.",
        {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    ),
    _function(
        "convert_currency",
        "Convert an amount between currencies.",
        {
            "amount": {"type": "number"},
            "source": {"enum": CURRENCIES},
            "target": {"enum": CURRENCIES},
        },
    ),
    _function(
        "find_flights",
        "Flights between two cities on a date.",
        {
            "origin": {"type": "string"},
            "destination": {"type": "string"},
            "date": {"type": "string", "pattern": "^2027-[0-1][0-9]-[0-3][0-9]$"},
        },
    ),
    _function("get_local_time", "The local time in a city.", {"city": {"type": "string"}}),
]


def _weather(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    city, unit = rng.choice(CITIES), rng.choice(["celsius", "fahrenheit"])
    question = rng.choice(
        ["What's the weather in {c} right now, in {u}?", "How warm is it in {c}? Give me {u}."]
    ).format(c=city, u=unit)
    return question, "get_weather", {"city": city, "unit": unit}


def _currency(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    amount = rng.choice([20, 50, 75, 100, 250, 1000])
    source, target = rng.sample(CURRENCIES, 2)
    question = rng.choice(
        ["How much is {a} {s} in {t}?", "Convert {a} {s} to {t}, please."]
    ).format(a=amount, s=source, t=target)
    return question, "convert_currency", {"amount": amount, "source": source, "target": target}


def _flights(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    origin, destination = rng.sample(CITIES, 2)
    date = f"2027-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    question = rng.choice(
        ["Find flights from {o} to {d} on {t}.", "Any flights {o} to {d} on {t}?"]
    ).format(o=origin, d=destination, t=date)
    return question, "find_flights", {"origin": origin, "destination": destination, "date": date}


def _time(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    city = rng.choice(CITIES)
    question = rng.choice(["What time is it in {c}?", "Local time in {c}?"]).format(c=city)
    return question, "get_local_time", {"city": city}


KINDS: list[Callable[[random.Random], tuple[str, str, dict[str, Any]]]] = [
    _weather,
    _currency,
    _flights,
    _time,
]


def tool_rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """`count` distinct rows: a question and the call that answers it."""
    rng, rows, seen = random.Random(seed), [], set()
    while len(rows) < count:
        question, name, arguments = rng.choice(KINDS)(rng)
        if question in seen:
            continue
        seen.add(question)
        call = {
            "id": f"call_{len(rows)}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }
        rows.append(
            {
                "tools": TOOLS,
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                ],
            }
        )
    return rows
