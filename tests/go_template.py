"""A renderer for the part of Go's text/template that slmforge's Ollama templates use (Ollama is
not installed here): if / else if / else, range (with `$i, $_ :=`), .Field, $.Field, $var,
string and int literals, eq / ne / and / or / not, and {{- -}} trimming."""

from __future__ import annotations

import re
from typing import Any

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _parse(template: str) -> list[Any]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    for match in _ACTION.finditer(template):
        text = template[pos : match.start()]
        if match.group(1):
            text = text.rstrip()
        if tokens and tokens[-1][0] == "trim":
            text = text.lstrip()
            tokens.pop()
        tokens.append(("text", text))
        tokens.append(("action", match.group(2)))
        if match.group(3):
            tokens.append(("trim", ""))
        pos = match.end()
    tail = template[pos:]
    if tokens and tokens[-1][0] == "trim":
        tail = tail.lstrip()
        tokens.pop()
    tokens.append(("text", tail))
    body, rest = _block(tokens)
    assert not rest, rest
    return body


def _block(tokens: list[tuple[str, str]]) -> tuple[list[Any], list[tuple[str, str]]]:
    """Nodes up to an else/end action (left in the returned rest)."""
    nodes: list[Any] = []
    while tokens:
        kind, value = tokens[0]
        if kind == "action" and (value == "end" or value.startswith("else")):
            return nodes, tokens
        tokens = tokens[1:]
        if kind == "text":
            nodes.append(("text", value))
        elif value.startswith("if "):
            branches = []
            condition: str | None = value[3:]
            while True:
                body, tokens = _block(tokens)
                branches.append((condition, body))
                action, tokens = tokens[0][1], tokens[1:]
                if action == "end":
                    break
                condition = action[8:] if action.startswith("else if ") else None
            nodes.append(("if", branches))
        elif value.startswith("range "):
            body, tokens = _block(tokens)
            assert tokens[0][1] == "end"
            tokens = tokens[1:]
            nodes.append(("range", value[6:], body))
        else:
            nodes.append(("out", value))
    return nodes, tokens


def _words(expr: str) -> list[str]:
    return re.findall(r'"[^"]*"|\([^()]*\)|[^\s()]+', expr)


def _eval(expr: str, dot: Any, scope: dict[str, Any]) -> Any:
    words = _words(expr.strip())
    functions = {
        "eq": lambda a, b: a == b,
        "ne": lambda a, b: a != b,
        "and": lambda a, b: b if a else a,
        "or": lambda a, b: a if a else b,
        "not": lambda a: not a,
    }
    if words[0] in functions:
        return functions[words[0]](*(_atom(w, dot, scope) for w in words[1:]))
    assert len(words) == 1, expr
    return _atom(words[0], dot, scope)


def _atom(word: str, dot: Any, scope: dict[str, Any]) -> Any:
    if word.startswith("("):
        return _eval(word[1:-1], dot, scope)
    if word.startswith('"'):
        return word[1:-1]
    if word.isdigit():
        return int(word)
    if word.startswith("$."):
        return scope["$"][word[2:]]
    if word.startswith("$"):
        return scope[word]
    if word.startswith("."):
        return dot[word[1:]]
    raise AssertionError(f"unsupported word {word!r}")


def _run(nodes: list[Any], dot: Any, scope: dict[str, Any]) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "out":
            out.append(str(_eval(node[1], dot, scope)))
        elif node[0] == "if":
            for condition, body in node[1]:
                if condition is None or _eval(condition, dot, scope):
                    out.append(_run(body, dot, scope))
                    break
        else:
            names, _, source = node[1].rpartition(":=")
            variables = [n.strip() for n in names.split(",")] if names else []
            for index, item in enumerate(_eval(source, dot, scope)):
                inner = dict(scope)
                if len(variables) == 2:
                    inner[variables[0]], inner[variables[1]] = index, item
                out.append(_run(node[2], item, inner))
    return "".join(out)


def render_go(template: str, messages: list[dict[str, str]]) -> str:
    """What Ollama sends to the model: system text in .System, every message in .Messages."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    root = {
        "System": system,
        "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages],
    }
    return _run(_parse(template), root, {"$": root})
