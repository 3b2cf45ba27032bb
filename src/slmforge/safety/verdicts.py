"""The content filter hook: every request's input and every answer pass through it.

`ContentFilter` is the interface `safety.filter.SafetyFilter` implements (severity per harm
category, thresholds, jailbreak detection). With no filter configured the server uses
`NoFilter`, which passes everything and adds nothing to responses. It lives in `safety`, below
the servers and the router that call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class FilterVerdict:
    blocked: bool = False
    # Azure-style annotations: {"hate": {"filtered": False, "severity": "safe"}, ...}
    results: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


class ContentFilter(Protocol):
    name: str

    def check_input(self, messages: list[dict[str, str]]) -> FilterVerdict: ...

    def check_output(self, text: str) -> FilterVerdict: ...


class NoFilter:
    name = "none"

    def check_input(self, messages: list[dict[str, str]]) -> FilterVerdict:
        return FilterVerdict()

    def check_output(self, text: str) -> FilterVerdict:
        return FilterVerdict()
