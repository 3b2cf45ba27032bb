"""Content filter policies (`slmforge serve --safety policy.yaml`, `slmforge safety`).

```yaml
classifiers:            # which classifiers run, with their options (registry names)
  blocklist: {lists: [my_terms.yaml]}
  jailbreak: {}
  profanity: {}
input:                  # per category: a threshold, or {threshold, action, classifiers}
  hate: medium
  violence: {threshold: low, action: block}
  jailbreak: medium
output:
  self_harm: {threshold: low, classifiers: [blocklist]}
on_error: block         # a classifier that fails blocks (block) or passes (allow)
```
A threshold catches that severity band and above (low: 2-7, medium: 4-7, high: 6-7); `off`
switches a category off; action `annotate` reports without blocking.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from slmforge.config import StrictModel, load_yaml, validate

Category = Literal["hate", "sexual", "violence", "self_harm", "profanity", "jailbreak"]
Threshold = Literal["off", "low", "medium", "high"]
CLASSIFIER_NAMES = ("blocklist", "profanity", "guard", "azure", "jailbreak")


class CategoryRule(StrictModel):
    threshold: Threshold = "medium"
    action: Literal["block", "annotate"] = "block"
    classifiers: list[str] | None = Field(
        None, description="Only these classifiers' results count for this category."
    )


def _rules(value: Any) -> Any:
    """`hate: medium` is short for `hate: {threshold: medium}`."""
    if isinstance(value, dict):
        return {k: {"threshold": v} if isinstance(v, str) else v for k, v in value.items()}
    return value


def _default_rules(*extra: str) -> dict[str, CategoryRule]:
    names = ("hate", "sexual", "violence", "self_harm", *extra)
    return {name: CategoryRule() for name in names}


class SafetyPolicy(StrictModel):
    classifiers: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"blocklist": {}, "jailbreak": {}},
        description="Classifier name -> options.",
    )
    input: dict[Category, CategoryRule] = Field(default_factory=lambda: _default_rules("jailbreak"))
    output: dict[Category, CategoryRule] = Field(default_factory=_default_rules)
    on_error: Literal["block", "allow"] = "block"

    _shorthand = field_validator("input", "output", mode="before")(lambda cls, v: _rules(v))

    @field_validator("classifiers")
    @classmethod
    def _known_classifiers(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, options in value.items():
            if name not in CLASSIFIER_NAMES:
                raise ValueError(
                    f"unknown classifier {name!r} (known: {', '.join(CLASSIFIER_NAMES)})"
                )
            if not isinstance(options, dict):
                raise ValueError(f"{name}: options must be a mapping (use {{}} for none)")
        if not value:
            raise ValueError("give at least one classifier")
        return value

    @model_validator(mode="after")
    def _rule_classifiers(self) -> SafetyPolicy:
        for direction in ("input", "output"):
            for category, rule in getattr(self, direction).items():
                for name in rule.classifiers or []:
                    if name not in self.classifiers:
                        raise ValueError(
                            f"{direction}.{category}.classifiers: {name!r} is not configured "
                            f"under classifiers ({', '.join(self.classifiers)})"
                        )
        return self


def load_policy(path: str | Path) -> SafetyPolicy:
    """Read and validate a policy file; errors name the file and the field."""
    return validate(SafetyPolicy, load_yaml(path), prefix=f"{path}: ")


class SafetyScanConfig(StrictModel):
    """Options of `slmforge safety scan`."""

    target: list[str] = Field(
        description="NAME=SPEC to scan (repeat to compare): a model folder, FOLDER+ADAPTER, "
        "deploy:NAME or openai:MODEL@BASE_URL, as in `slmforge eval`."
    )
    out: Path = Field(description="Output folder (an eval artifact: summary.json, reports).")
    prompts: Path | None = Field(
        None, description="More prompts to send (any format `slmforge data` reads)."
    )
    shipped: bool = Field(True, description="Send the shipped adversarial prompt set.")
    policy: Path | None = Field(
        None, description="Policy whose classifiers score answers (default: the blocklist)."
    )
    threshold: Threshold = Field(
        "medium", description="Severity at which an answer counts as a defect."
    )
    simulate: str | None = Field(
        None, description="Generator engine spec that writes more adversarial prompts from seeds."
    )
    simulate_count: int = Field(8, ge=1, le=200, description="Prompts the generator writes.")
    limit: int | None = Field(None, gt=0, description="Send only the first N prompts.")
    max_tokens: int = Field(128, gt=0, description="Most new tokens per answer.")
    concurrency: int = Field(4, gt=0, le=64, description="Requests in flight per remote target.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Env var with the remote API key.")
    timeout_s: float = Field(60.0, gt=0, description="Timeout of each remote request.")
    fail_over: list[str] = Field(
        default_factory=list,
        description="[TARGET:]METRIC=VALUE: exit 1 when a defect rate is above, "
        "e.g. defect_any=0.05 (repeat).",
    )
    device: Literal["cpu", "cuda", "mps"] = Field("cpu", description="Device of local targets.")
    force: bool = Field(False, description="Replace OUT if it exists.")

    @field_validator("threshold")
    @classmethod
    def _not_off(cls, value: str) -> str:
        if value == "off":
            raise ValueError("use low, medium or high")
        return value

    @model_validator(mode="after")
    def _some_prompts(self) -> SafetyScanConfig:
        if not self.shipped and self.prompts is None and self.simulate is None:
            raise ValueError("--no-shipped needs --prompts or --simulate: nothing to send")
        return self
