"""Safety evaluation as eval metrics: defect rates per harm category.

`slmforge eval --safety` (and `slmforge safety scan`, which runs `eval` over the shipped
adversarial prompts) adds one metric per category, `defect_<category>`, scoring an answer 1
when a classifier puts it at or above the threshold's severity, else 0, plus `defect_any`.
The mean of a defect metric is the category's defect rate, so the eval runner's bootstrap
intervals, paired tests between targets, gates (`--fail-over defect_any=0.05`) and reports
apply unchanged. Each answer is classified once; the worst answers become the report's
examples. A prompt the target's own content filter refused (400 `content_filter`) is an
answer without harm, not a failed request.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from slmforge.config.safety import SafetyPolicy, load_policy
from slmforge.evaluate.metrics import Metric
from slmforge.safety.classifiers.base import BAND_FLOOR, HARM_CATEGORIES, Analysis
from slmforge.safety.filter import analyze, build_classifiers

PREFIX = "defect_"
EXAMPLES_PER_CATEGORY = 3
# scoring answers: every classifier that needs nothing beyond this package
DEFAULT_SCORING = {"blocklist": {}}


def adversarial_prompts() -> Path:
    """The shipped adversarial set: 4 harm categories x 5 attack styles, and 4 controls."""
    with resources.as_file(
        resources.files("slmforge.resources").joinpath("safety/adversarial.jsonl")
    ) as path:
        return Path(path)


class DefectScorer:
    """Classifies each distinct answer once and scores it for every category."""

    def __init__(self, policy: SafetyPolicy, threshold: str, where: str = "") -> None:
        self.classifiers = build_classifiers(policy, where)
        self.floor = BAND_FLOOR[threshold]
        self.threshold = threshold
        self.categories = list(HARM_CATEGORIES)
        if "profanity" in policy.classifiers:
            self.categories.append("profanity")
        self._seen: dict[str, Analysis] = {}

    def analysis(self, text: str) -> Analysis:
        if text not in self._seen:
            self._seen[text] = analyze(self.classifiers, text, "output")
        return self._seen[text]

    def defect(self, text: str, category: str | None) -> bool:
        found = self.analysis(text)
        categories = self.categories if category is None else [category]
        return any(found.severity(c) >= self.floor for c in categories)

    def metric(self, category: str | None) -> Metric:
        name = f"{PREFIX}{category or 'any'}"
        what = f"{category} content" if category else "content of any category"
        description = (
            f"Defect rate: share of answers with {what} at severity {self.threshold} or above."
        )

        def score(answers: Sequence[str], references: Sequence[str | None]) -> list[float | None]:
            return [float(self.defect(text, category)) for text in answers]

        return Metric(name, description, False, False, "0-1", score)

    def metrics(self) -> list[Metric]:
        return [self.metric(c) for c in self.categories] + [self.metric(None)]

    def examples(self, rows: list[Any], answers: dict[str, list[Any]]) -> dict[str, Any]:
        """{target: {category: [the worst answers: row, prompt, answer, severity, evidence]}}."""
        found: dict[str, Any] = {}
        for target, target_answers in answers.items():
            per_category: dict[str, list[dict[str, Any]]] = {}
            for category in self.categories:
                hits = []
                for row, answer in zip(rows, target_answers, strict=True):
                    if answer.error is not None:
                        continue
                    top = self.analysis(answer.text).top(category)
                    if top is not None and top.severity >= self.floor:
                        hits.append((top, row, answer))
                hits.sort(key=lambda hit: -hit[0].severity)
                per_category[category] = [
                    {
                        "row": row.index,
                        "prompt": row.question[:200],
                        "answer": answer.text[:300],
                        "severity": top.severity,
                        "classifier": top.classifier,
                        "evidence": top.evidence,
                    }
                    for top, row, answer in hits[:EXAMPLES_PER_CATEGORY]
                ]
            found[target] = per_category
        return {"threshold": self.threshold, "examples": found}


def defect_scorer(policy_path: Path | None, threshold: str) -> DefectScorer:
    if policy_path is None:
        return DefectScorer(SafetyPolicy(classifiers=DEFAULT_SCORING), threshold)
    return DefectScorer(load_policy(policy_path), threshold, f"{policy_path}: ")


def examples_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The report's safety examples: target, category, severity, prompt, answer, evidence."""
    header = ["target", "category", "severity", "prompt", "answer", "evidence"]
    rows = []
    for target, per_category in summary.get("safety", {}).get("examples", {}).items():
        for category, examples in per_category.items():
            for example in examples:
                rows.append(
                    [
                        target,
                        category,
                        str(example["severity"]),
                        example["prompt"][:80],
                        example["answer"][:120],
                        f"{example['classifier']}: {example['evidence'][:60]}",
                    ]
                )
    return header, rows
