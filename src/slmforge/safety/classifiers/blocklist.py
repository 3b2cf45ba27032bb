"""`blocklist`: user term lists per category, matched on folded text (see `normalize.fold`).

An entry is a word or phrase matched at word boundaries (`kill yourself`), `exact:TEXT`
matched anywhere (`exact:nsfw`), or `re:PATTERN` (a regular expression on the folded text).
Lists come from YAML files (`{category: [entries]}` or `{category: {severity: N, terms:
[...]}}`) and/or the classifier's `terms` option; the shipped list
(`resources/safety/blocklist.yaml`) is used unless `builtin: false`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from slmforge.errors import InputError
from slmforge.safety.classifiers.base import CATEGORIES, CategoryResult, register_classifier
from slmforge.safety.normalize import fold

DEFAULT_SEVERITY = 6


@dataclass(frozen=True)
class Term:
    category: str
    entry: str
    pattern: re.Pattern[str]
    severity: int


def compile_entry(entry: str, where: str) -> re.Pattern[str]:
    if entry.startswith("re:"):
        try:
            return re.compile(entry[3:])
        except re.error as exc:
            raise InputError(f"{where}: bad regular expression {entry[3:]!r}: {exc}") from None
    if entry.startswith("exact:"):
        return re.compile(re.escape(fold(entry[6:])))
    words = [re.escape(w) for w in fold(entry).split()]
    if not words:
        raise InputError(f"{where}: empty term")
    # words may run together: spacing tricks ("k i l l m y s e l f") fold to "killmyself"
    return re.compile(r"(?<!\w)" + r"\s*".join(words) + r"(?!\w)")


def parse_lists(data: Any, where: str) -> list[Term]:
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of category -> terms")
    terms = []
    for category, value in data.items():
        if category not in CATEGORIES:
            raise InputError(
                f"{where}: {category}: unknown category (known: {', '.join(CATEGORIES)})"
            )
        severity = DEFAULT_SEVERITY
        if isinstance(value, dict):
            severity = int(value.get("severity", DEFAULT_SEVERITY))
            value = value.get("terms", [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{where}: {category}: expected a list of terms")
        if not 0 <= severity <= 7:
            raise InputError(f"{where}: {category}.severity: must be 0-7, got {severity}")
        terms += [
            Term(category, e, compile_entry(e, f"{where}: {category}"), severity) for e in value
        ]
    return terms


def builtin_terms() -> list[Term]:
    text = resources.files("slmforge.resources").joinpath("safety/blocklist.yaml").read_text()
    return parse_lists(yaml.safe_load(text), "blocklist.yaml (shipped)")


class Blocklist:
    name = "blocklist"

    def __init__(self, terms: list[Term]) -> None:
        self.terms = terms

    def classify(self, text: str, direction: str) -> list[CategoryResult]:
        folded = fold(text)
        found = []
        for term in self.terms:
            match = term.pattern.search(folded)
            if match:
                found.append(
                    CategoryResult(
                        term.category, term.severity, term.entry, match.group(0), "blocklist"
                    )
                )
        return found


@register_classifier("blocklist")
def _blocklist(options: dict[str, Any]) -> Blocklist:
    unknown = set(options) - {"lists", "terms", "builtin"}
    if unknown:
        raise InputError(f"blocklist: unknown option {sorted(unknown)[0]} (lists, terms, builtin)")
    terms = builtin_terms() if options.get("builtin", True) else []
    for path in options.get("lists", []):
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"{path}: cannot read blocklist: {exc.strerror}") from None
        terms += parse_lists(data, str(path))
    if options.get("terms"):
        terms += parse_lists(options["terms"], "blocklist.terms")
    return Blocklist(terms)
