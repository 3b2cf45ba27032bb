"""What every classifier returns, and the registry classifiers register in.

The vocabulary is Azure AI Content Safety's, so local and cloud numbers read the same: four
harm categories plus profanity and jailbreak, each with a severity 0-7 that maps to the bands
safe (0-1), low (2-3), medium (4-5) and high (6-7).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from slmforge.errors import InputError, RunError

HARM_CATEGORIES = ("hate", "sexual", "violence", "self_harm")
CATEGORIES = (*HARM_CATEGORIES, "profanity", "jailbreak")
BANDS = ("safe", "low", "medium", "high")
# lowest severity of each band: a threshold "low" catches severity >= 2
BAND_FLOOR = {"safe": 0, "low": 2, "medium": 4, "high": 6}


def band(severity: int) -> str:
    """Severity 0-7 -> safe | low | medium | high."""
    return BANDS[min(max(severity, 0), 7) // 2]


@dataclass(frozen=True)
class CategoryResult:
    category: str
    severity: int  # 0-7
    label: str = ""  # what the classifier called it (a term, a Llama Guard code, a probability)
    evidence: str = ""  # the span or reason that led to it
    classifier: str = ""

    @property
    def band(self) -> str:
        return band(self.severity)


@dataclass
class Analysis:
    """Everything the classifiers found in one text, and which of them failed."""

    found: list[CategoryResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def top(self, category: str, classifiers: list[str] | None = None) -> CategoryResult | None:
        """The most severe result of `category` (from `classifiers` only, when given)."""
        best = None
        for result in self.found:
            if result.category != category:
                continue
            if classifiers is not None and result.classifier not in classifiers:
                continue
            if best is None or result.severity > best.severity:
                best = result
        return best

    def severity(self, category: str, classifiers: list[str] | None = None) -> int:
        best = self.top(category, classifiers)
        return best.severity if best else 0


class ClassifierError(RunError):
    """A classifier could not give a verdict (a malformed guard reply, an unreachable API)."""


class Classifier(Protocol):
    name: str

    def classify(self, text: str, direction: str) -> list[CategoryResult]:
        """Results for `text`; direction is "input" (a prompt) or "output" (an answer)."""
        ...


ClassifierFactory = Callable[[dict[str, Any]], Classifier]
CLASSIFIERS: dict[str, ClassifierFactory] = {}


def register_classifier(name: str) -> Callable[[ClassifierFactory], ClassifierFactory]:
    def decorator(factory: ClassifierFactory) -> ClassifierFactory:
        CLASSIFIERS[name] = factory
        return factory

    return decorator


def make_classifier(name: str, options: dict[str, Any] | None = None) -> Classifier:
    from slmforge.safety import classifiers  # noqa: F401  (registers the built-in ones)

    if name not in CLASSIFIERS:
        known = ", ".join(sorted(CLASSIFIERS))
        raise InputError(f"unknown classifier {name!r} (known: {known})")
    return CLASSIFIERS[name](dict(options or {}))
