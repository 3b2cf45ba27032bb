"""`profanity`: the offline `alt-profanity-check` model (a linear SVM over word n-grams),
its probability mapped to a severity by bands."""

from __future__ import annotations

from typing import Any

from slmforge.errors import InputError, MissingDependencyError
from slmforge.safety.classifiers.base import CategoryResult, register_classifier

# probability -> severity: below 0.5 is safe; the bands follow the model's calibration on
# the shipped labelled set (docs/safety.md)
BANDS = ((0.95, 6), (0.8, 4), (0.5, 2))


def severity_of(probability: float) -> int:
    return next((sev for floor, sev in BANDS if probability >= floor), 0)


class Profanity:
    name = "profanity"

    def __init__(self, category: str) -> None:
        try:
            from profanity_check import predict_prob
        except ImportError:
            raise MissingDependencyError(
                "alt-profanity-check", "safety", "the profanity classifier"
            ) from None
        self._predict = predict_prob
        self.category = category

    def classify(self, text: str, direction: str) -> list[CategoryResult]:
        probability = float(self._predict([text])[0])
        severity = severity_of(probability)
        if severity == 0:
            return []
        return [
            CategoryResult(self.category, severity, f"p={probability:.2f}", text[:80], self.name)
        ]


@register_classifier("profanity")
def _profanity(options: dict[str, Any]) -> Profanity:
    unknown = set(options) - {"category"}
    if unknown:
        raise InputError(f"profanity: unknown option {sorted(unknown)[0]} (category)")
    return Profanity(options.get("category", "profanity"))
