"""Preference pairs: a prompt, the answer preferred and the answer not preferred.

Read from OpenAI's DPO fine-tuning rows (`input.messages`, `preferred_output`,
`non_preferred_output`) and TRL's rows (`prompt`, `chosen`, `rejected`: plain text or
conversational). DPO, ORPO and SimPO train on these (`train/preference.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class PreferenceExample:
    """One pair. `prompt` is the conversation before the answers (system, user, ... turns, in
    OpenAI's message shape, ending with a user or tool message); `chosen` and `rejected` are
    the assistant messages that answer it (usually one each)."""

    prompt: list[dict[str, Any]]
    chosen: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    line: int | None = None
    source: str = ""
    tools: list[dict[str, Any]] | None = None
    meta: dict[str, Any] | None = None

    @property
    def chosen_messages(self) -> list[dict[str, Any]]:
        return self.prompt + self.chosen

    @property
    def rejected_messages(self) -> list[dict[str, Any]]:
        return self.prompt + self.rejected
