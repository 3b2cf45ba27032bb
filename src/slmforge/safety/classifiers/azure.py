"""`azure`: Azure AI Content Safety's REST API, for users who have the service.

`text:analyze` gives the four harm categories with severities 0-7 (EightSeverityLevels);
`text:shieldPrompt` (inputs only) gives jailbreak detection. The key is read from an
environment variable and sent only as the `Ocp-Apim-Subscription-Key` header.
"""

from __future__ import annotations

import os
from typing import Any

from slmforge.errors import InputError
from slmforge.safety.classifiers.base import (
    CategoryResult,
    ClassifierError,
    register_classifier,
)

API_VERSION = "2024-09-01"
AZURE_CATEGORIES = {
    "Hate": "hate",
    "Sexual": "sexual",
    "Violence": "violence",
    "SelfHarm": "self_harm",
}
JAILBREAK_SEVERITY = 6


class AzureContentSafety:
    name = "azure"

    def __init__(self, endpoint: str, key: str, shield_prompt: bool, timeout_s: float) -> None:
        import httpx

        self.endpoint = endpoint.rstrip("/")
        self.shield_prompt = shield_prompt
        self.client = httpx.Client(timeout=timeout_s, headers={"Ocp-Apim-Subscription-Key": key})

    def _post(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        url = f"{self.endpoint}/contentsafety/text:{operation}?api-version={API_VERSION}"
        try:
            response = self.client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise ClassifierError(f"azure: {operation} failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            message = response.text[:120]
            raise ClassifierError(f"azure: {operation} answered {response.status_code}: {message}")
        try:
            return response.json()
        except ValueError:
            raise ClassifierError(f"azure: {operation} answered with invalid JSON") from None

    def classify(self, text: str, direction: str) -> list[CategoryResult]:
        body = {"text": text, "outputType": "EightSeverityLevels"}
        found = []
        for item in self._post("analyze", body).get("categoriesAnalysis", []):
            category = AZURE_CATEGORIES.get(item.get("category"))
            severity = item.get("severity")
            if category and isinstance(severity, int) and severity > 0:
                found.append(CategoryResult(category, severity, item["category"], "", self.name))
        if direction == "input" and self.shield_prompt:
            shield = self._post("shieldPrompt", {"userPrompt": text, "documents": []})
            if shield.get("userPromptAnalysis", {}).get("attackDetected"):
                found.append(
                    CategoryResult("jailbreak", JAILBREAK_SEVERITY, "attackDetected", "", self.name)
                )
        return found


@register_classifier("azure")
def _azure(options: dict[str, Any]) -> AzureContentSafety:
    allowed = {"endpoint", "key_env", "shield_prompt", "timeout_s"}
    unknown = set(options) - allowed
    if unknown:
        raise InputError(
            f"azure: unknown option {sorted(unknown)[0]} ({', '.join(sorted(allowed))})"
        )
    if not options.get("endpoint"):
        raise InputError("azure: endpoint: required (https://NAME.cognitiveservices.azure.com)")
    key_env = options.get("key_env", "AZURE_CONTENT_SAFETY_KEY")
    key = os.environ.get(key_env)
    if not key:
        raise InputError(f"azure: set the environment variable {key_env} to the service's key")
    return AzureContentSafety(
        options["endpoint"],
        key,
        bool(options.get("shield_prompt", True)),
        float(options.get("timeout_s", 10.0)),
    )
