"""Text templates: placeholders, escapes, and the examples a template cannot render."""

from __future__ import annotations

import pytest

from slmforge.data.formats import Example
from slmforge.data.templates import TemplateError, check_template, render_text
from slmforge.errors import ConfigError

PAIR = [{"role": "user", "content": "Q {response}"}, {"role": "assistant", "content": "A {x}"}]


def test_render_replaces_only_the_placeholders() -> None:
    text = render_text(Example(PAIR), "{prompt} -> {response} {literal}")
    assert text == "Q {response} -> A {x} {literal}"


def test_system_placeholder_and_escapes() -> None:
    example = Example([{"role": "system", "content": "S"}, *PAIR])
    assert render_text(example, r"{system}\n{prompt}\t{response}") == "S\nQ {response}\tA {x}"
    assert render_text(Example(PAIR), "[{system}]{prompt}{response}") == "[]Q {response}A {x}"


def test_system_message_without_placeholder_is_refused() -> None:
    example = Example([{"role": "system", "content": "S"}, *PAIR])
    with pytest.raises(TemplateError, match=r"no \{system\} placeholder"):
        render_text(example, "{prompt}{response}")


def test_multi_turn_is_refused() -> None:
    with pytest.raises(TemplateError, match="4 turns"):
        render_text(Example(PAIR + PAIR), "{prompt}{response}")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (None, "required"),
        ("{prompt} only", r"must contain \{response\}"),
        ("{promt} {response}", r"unknown placeholder \{promt\}"),
    ],
)
def test_check_template(template: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_template(template)


def test_check_template_decodes_escapes() -> None:
    assert check_template(r"{prompt}\n{response}") == "{prompt}\n{response}"
