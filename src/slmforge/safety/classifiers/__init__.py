"""The classifier registry: one module per classifier, each registering itself by name."""

from slmforge.safety import jailbreak  # noqa: F401
from slmforge.safety.classifiers import azure, blocklist, guard, profanity  # noqa: F401
from slmforge.safety.classifiers.base import (
    CATEGORIES,
    CLASSIFIERS,
    Analysis,
    CategoryResult,
    Classifier,
    ClassifierError,
    band,
    make_classifier,
    register_classifier,
)

__all__ = [
    "CATEGORIES",
    "CLASSIFIERS",
    "Analysis",
    "CategoryResult",
    "Classifier",
    "ClassifierError",
    "band",
    "make_classifier",
    "register_classifier",
]
