"""Function calling in the OpenAI chat API: the tools a request declares, its `tool_choice`, the
calls of earlier assistant turns it sends back, and the calls a reply or a stream chunk carries.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from slmforge.runtime.engine import ToolCall
from slmforge.serve.protocol_base import OpenAIObject, Strict

FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionDefinition(Strict):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _parameters_are_a_schema(self) -> FunctionDefinition:
        from jsonschema import SchemaError, validators

        if self.parameters is not None:
            try:
                validators.validator_for(self.parameters).check_schema(self.parameters)
            except SchemaError as exc:
                raise ValueError(f"parameters: not a valid JSON schema: {exc.message}") from None
        return self


class ToolDefinition(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCallPart(Strict):
    name: str
    arguments: str


class RequestToolCall(Strict):
    """A call of an earlier assistant turn, sent back with the conversation."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallPart


class ToolFields(Strict):
    """The function-calling fields of a chat request, checked against each other."""

    tools: list[ToolDefinition] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _choice_names_a_tool(self) -> ToolFields:
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: function names must be unique")
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice: function {choice.function.name!r} is not in tools")
        if choice == "required" and not names:
            raise ValueError("tool_choice: 'required' needs tools")
        return self

    def tool_options(self) -> dict[str, Any]:
        """`GenParams` fields: tools as plain dicts, the choice normalized."""
        if not self.tools:
            return {}
        choice = self.tool_choice or "auto"
        return {
            "tools": [t.model_dump(exclude_none=True) for t in self.tools],
            "tool_choice": choice if isinstance(choice, str) else choice.model_dump(),
            "parallel_tool_calls": self.parallel_tool_calls is not False,
        }


# -- replies --------------------------------------------------------------------------------------
class FunctionCall(OpenAIObject):
    name: str
    arguments: str


class ToolCallObject(OpenAIObject):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    @classmethod
    def of(cls, call: ToolCall) -> ToolCallObject:
        return cls(id=call.id, function=FunctionCall(name=call.name, arguments=call.arguments))


class DeltaFunctionCall(OpenAIObject):
    optional_fields = frozenset({"name", "arguments"})

    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(OpenAIObject):
    """A stream's piece of one call: OpenAI sends the id, type and name first (arguments ""),
    then the arguments."""

    optional_fields = frozenset({"id", "type"})

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall

    @classmethod
    def pieces(cls, index: int, call: ToolCall) -> list[DeltaToolCall]:
        head = cls(
            index=index, id=call.id, type="function",
            function=DeltaFunctionCall(name=call.name, arguments=""),
        )  # fmt: skip
        return [head, cls(index=index, function=DeltaFunctionCall(arguments=call.arguments))]


def request_tool_calls(calls: list[RequestToolCall]) -> list[dict[str, Any]]:
    """Earlier calls as chat templates take them (OpenAI's shape, arguments as text)."""
    return [{"id": c.id, "type": "function", "function": c.function.model_dump()} for c in calls]


def check_tool_replies(messages: list[Any]) -> None:
    """Each `tool` message answers a call of an earlier assistant message (OpenAI answers 400
    otherwise)."""
    calls: set[str] = set()
    for index, message in enumerate(messages):
        calls.update(call.id for call in message.tool_calls or [])
        if message.role == "tool" and message.tool_call_id not in calls:
            raise ValueError(
                f"messages[{index}].tool_call_id: {message.tool_call_id!r} answers no tool call "
                "of an earlier assistant message"
            )
