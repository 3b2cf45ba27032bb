"""`guard`: a guard model behind any Engine, its verdict parsed into categories.

`format: llama_guard` sends the conversation as-is to a Llama Guard model (its own chat
template adds the policy) and parses `safe` or `unsafe` + a line of codes (`S1,S10`);
`format: rubric` asks any chat model to answer in that same format from a rubric prompt
holding the Llama Guard 3 taxonomy. A reply in neither shape is a `ClassifierError`, which the
filter policy's `on_error` turns into a block (default) or a pass.
"""

from __future__ import annotations

from typing import Any

from slmforge.errors import InputError, RemoteError
from slmforge.safety.classifiers.base import (
    CategoryResult,
    ClassifierError,
    register_classifier,
)

# Llama Guard 3 hazard codes -> our categories; codes outside the four harm categories
# (defamation, privacy, elections, ...) are valid replies that no category here covers
LLAMA_GUARD_CODES = {
    "S1": "violence",  # violent crimes
    "S3": "sexual",  # sex-related crimes
    "S4": "sexual",  # child sexual exploitation
    "S9": "violence",  # indiscriminate weapons
    "S10": "hate",
    "S11": "self_harm",
    "S12": "sexual",  # sexual content
}
KNOWN_CODES = {f"S{i}" for i in range(1, 15)}
RUBRIC = """You are a content safety classifier. Check the {role} message below against these \
categories:
S1: Violent Crimes. S2: Non-Violent Crimes. S3: Sex-Related Crimes. S4: Child Sexual \
Exploitation. S5: Defamation. S6: Specialized Advice. S7: Privacy. S8: Intellectual Property. \
S9: Indiscriminate Weapons. S10: Hate. S11: Suicide & Self-Harm. S12: Sexual Content. \
S13: Elections. S14: Code Interpreter Abuse.

<BEGIN MESSAGE>
{text}
<END MESSAGE>

Answer with 'safe' on the first line, or 'unsafe' on the first line and a comma-separated \
list of the violated categories (e.g. S1,S10) on the second line. Nothing else."""


def parse_llama_guard(reply: str, severity: int) -> list[CategoryResult]:
    lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
    first = lines[0].lower().rstrip(".") if lines else ""
    if first == "safe":
        return []
    if first != "unsafe":
        raise ClassifierError(f"guard: expected 'safe' or 'unsafe', got {reply[:60]!r}")
    codes = [c.strip().upper() for c in lines[1].split(",")] if len(lines) > 1 else []
    if not codes or any(code not in KNOWN_CODES for code in codes):
        raise ClassifierError(f"guard: 'unsafe' without valid category codes: {reply[:60]!r}")
    return [
        CategoryResult(LLAMA_GUARD_CODES[code], severity, code, reply.strip()[:80], "guard")
        for code in codes
        if code in LLAMA_GUARD_CODES
    ]


class Guard:
    name = "guard"

    def __init__(self, engine: Any, fmt: str, severity: int, max_tokens: int) -> None:
        self.engine, self.format, self.severity = engine, fmt, severity
        self.max_tokens = max_tokens

    def classify(self, text: str, direction: str) -> list[CategoryResult]:
        from slmforge.runtime.engine import GenParams, complete

        role = "User" if direction == "input" else "Agent"
        if self.format == "llama_guard":
            messages = [{"role": "user", "content": text}]
            if direction == "output":
                messages = [{"role": "user", "content": ""}, {"role": "assistant", "content": text}]
        else:
            messages = [{"role": "user", "content": RUBRIC.format(role=role, text=text)}]
        params = GenParams(max_tokens=self.max_tokens, temperature=0.0)
        try:
            reply = complete(self.engine, messages, params).text
        except RemoteError as exc:
            raise ClassifierError(f"guard: {exc}") from None
        return parse_llama_guard(reply, self.severity)


@register_classifier("guard")
def _guard(options: dict[str, Any]) -> Guard:
    allowed = {"engine", "format", "severity", "max_tokens", "api_key_env", "retries", "timeout_s"}
    unknown = set(options) - allowed
    if unknown:
        known = ", ".join(sorted(allowed))
        raise InputError(f"guard: unknown option {sorted(unknown)[0]} ({known})")
    if not options.get("engine"):
        raise InputError("guard: engine: required (an engine spec, e.g. openai:llama-guard@URL)")
    fmt = options.get("format", "llama_guard")
    if fmt not in ("llama_guard", "rubric"):
        raise InputError(f"guard: format: expected llama_guard or rubric, got {fmt!r}")
    severity, max_tokens = int(options.get("severity", 6)), int(options.get("max_tokens", 20))
    return Guard(guard_engine(options), fmt, severity, max_tokens)


def guard_engine(options: dict[str, Any]) -> Any:
    """The engine of a guard model (also used by the jailbreak classifier's guard)."""
    from slmforge.runtime.specs import load_engine

    remote = {"api_key_env": options["api_key_env"]} if "api_key_env" in options else {}
    if not options["engine"].startswith(("openai:", "profile:")):
        remote = {}  # a local guard model: loaded in this process
    else:
        # a guard sits in every request's path: fail (and let on_error decide) rather than wait
        remote |= {
            "max_retries": int(options.get("retries", 1)),
            "timeout_s": float(options.get("timeout_s", 10.0)),
        }
    return load_engine(options["engine"], **remote)
