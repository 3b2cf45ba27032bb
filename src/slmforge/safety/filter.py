"""The severity policy: classifiers' results -> block or pass, with Azure-style annotations.

`SafetyFilter` is the server's `ContentFilter` (safety/verdicts.py): `check_input` sees a
request's prompt messages, `check_output` an answer's text so far (the server calls it on
growing windows of a streamed answer, so harm is cut off early). Every verdict carries
`results` in Azure OpenAI's `content_filter_results` shape:
`{"hate": {"filtered": false, "severity": "safe"}, "jailbreak": {"filtered": true,
"detected": true}}`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from slmforge.config.safety import CategoryRule, SafetyPolicy, load_policy
from slmforge.errors import InputError
from slmforge.safety.classifiers.base import (
    BAND_FLOOR,
    Analysis,
    Classifier,
    ClassifierError,
    band,
    make_classifier,
)
from slmforge.safety.verdicts import FilterVerdict

DETECTION_CATEGORIES = ("jailbreak",)  # reported as detected/filtered, like prompt shields


def build_classifiers(policy: SafetyPolicy, where: str = "") -> dict[str, Classifier]:
    classifiers = {}
    for name, options in policy.classifiers.items():
        try:
            classifiers[name] = make_classifier(name, options)
        except InputError as exc:
            message = str(exc)
            if not message.startswith(f"{name}:"):
                message = f"{name}: {message}"
            raise InputError(f"{where}classifiers.{message}") from None
    return classifiers


def analyze(classifiers: dict[str, Classifier], text: str, direction: str) -> Analysis:
    """Every classifier over `text`; a failing one is recorded in `errors`."""
    analysis = Analysis()
    for name, classifier in classifiers.items():
        try:
            found = classifier.classify(text, direction)
        except ClassifierError as exc:
            analysis.errors.append(str(exc))
            continue
        # results are attributed to the policy's name for the classifier
        analysis.found += [replace(result, classifier=name) for result in found]
    return analysis


class SafetyFilter:
    name = "safety"

    def __init__(self, policy: SafetyPolicy, where: str = "") -> None:
        self.policy = policy
        self.classifiers = build_classifiers(policy, where)
        # whether an answer can be blocked at all (the router streams unscreened if not)
        self.screens_output = any(
            rule.threshold != "off" and rule.action == "block" for rule in policy.output.values()
        )

    @classmethod
    def from_file(cls, path: str | Path) -> SafetyFilter:
        return cls(load_policy(path), f"{path}: ")

    def check_input(self, messages: list[dict[str, str]]) -> FilterVerdict:
        text = "\n".join(m["content"] for m in messages if m.get("role") != "assistant")
        return self.verdict(text, "input")

    def check_output(self, text: str) -> FilterVerdict:
        return self.verdict(text, "output")

    def verdict(self, text: str, direction: str) -> FilterVerdict:
        rules: dict[str, CategoryRule] = getattr(self.policy, direction)
        analysis = analyze(self.classifiers, text, direction)
        results: dict[str, Any] = {}
        blocked_by = []
        for category, rule in rules.items():
            top = analysis.top(category, rule.classifiers)
            severity = top.severity if top else 0
            hit = rule.threshold != "off" and severity >= BAND_FLOOR[rule.threshold]
            filtered = hit and rule.action == "block"
            if filtered:
                blocked_by.append(category)
            if category in DETECTION_CATEGORIES:
                results[category] = {"filtered": filtered, "detected": hit}
            else:
                results[category] = {"filtered": filtered, "severity": band(severity)}
        reason = ", ".join(blocked_by)
        if analysis.errors:
            results["error"] = {"code": "classifier_error", "message": "; ".join(analysis.errors)}
            if self.policy.on_error == "block" and not blocked_by:
                blocked_by.append("error")
                reason = "a classifier failed and the policy blocks on errors"
        return FilterVerdict(blocked=bool(blocked_by), results=results, reason=reason)
