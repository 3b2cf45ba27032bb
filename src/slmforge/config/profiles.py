"""Cloud profiles: named OpenAI-compatible endpoints (`slmforge profile ...`, `profile:NAME`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slmforge.config import StrictModel

ProfileKind = Literal["openai", "azure-openai", "compatible"]
KeySource = Literal["env", "keyring", "file", "none"]


class Profile(StrictModel):
    """One stored profile, as it is written in `$SLMFORGE_HOME/profiles.yaml` (never a key)."""

    kind: ProfileKind
    base_url: str
    model: str | None = None
    api_version: str | None = None
    deployment: str | None = None
    key: KeySource = "keyring"
    api_key_env: str | None = None

    @property
    def request_model(self) -> str:
        """What requests ask for: the deployment on Azure OpenAI, the model elsewhere."""
        return (self.deployment if self.kind == "azure-openai" else self.model) or ""


class ProfileAddConfig(StrictModel):
    name: str = Field(description="Profile name, used as profile:NAME (letters, digits, _ . -).")
    kind: ProfileKind = Field(
        description="openai (api.openai.com), azure-openai, or compatible (vLLM, Ollama, ...)."
    )
    base_url: str | None = Field(
        None,
        description="Endpoint URL (default for openai: https://api.openai.com/v1; for "
        "azure-openai the resource endpoint https://NAME.openai.azure.com).",
    )
    model: str | None = Field(None, description="Model to ask for (openai and compatible).")
    api_version: str | None = Field(None, description="Azure OpenAI API version (azure-openai).")
    deployment: str | None = Field(None, description="Azure OpenAI deployment (azure-openai).")
    api_key_env: str | None = Field(
        None, description="Read the key from this environment variable at use; nothing is stored."
    )
    store_key_in_file: bool = Field(
        False,
        description="Store the key in a mode-600 file under $SLMFORGE_HOME/keys instead of the "
        "system keyring.",
    )
    keyless: bool = Field(False, description="The endpoint needs no key (a local server).")
    force: bool = Field(False, description="Replace the profile if it exists.")
