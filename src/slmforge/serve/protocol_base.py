"""The two bases of the protocol models: strict requests and OpenAI-shaped response objects."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_serializer


class Strict(BaseModel):
    """A request part: unknown fields are errors, as the OpenAI API answers them."""

    model_config = ConfigDict(extra="forbid")


class OpenAIObject(BaseModel):
    """A response object: `optional_fields` appear only when set, every other field always."""

    optional_fields: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _drop_unset_optionals(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for name in self.optional_fields - self.model_fields_set:
            data.pop(name, None)
        return data
