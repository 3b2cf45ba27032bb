"""Plain-text rendering of single-turn examples with a user-given template.

A template holds `{prompt}` and `{response}`, and optionally `{system}`, e.g.
`<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n{response}<|end|>`. Only these three placeholders
are replaced (with plain string replacement, not `str.format`), so braces elsewhere in the
template or in the data are kept as they are. The two-character escapes `\\n` and `\\t` become a
newline and a tab, because that is how people type templates on a command line.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from slmforge.errors import ConfigError

if TYPE_CHECKING:
    from slmforge.data.formats import Example

PLACEHOLDERS = ("prompt", "response", "system")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_ESCAPES = {"\\n": "\n", "\\t": "\t"}


class TemplateError(ValueError):
    """An example the template cannot render (the caller adds file and line)."""


def decode_escapes(template: str) -> str:
    for escape, char in _ESCAPES.items():
        template = template.replace(escape, char)
    return template


def check_template(template: str | None) -> str:
    """The decoded template, or a ConfigError saying what is missing or unknown in it."""
    if not template:
        raise ConfigError(
            "--text-template is required for text output, e.g. "
            "'<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n{response}<|end|>'"
        )
    names = set(_PLACEHOLDER.findall(template))
    unknown = sorted(names - set(PLACEHOLDERS))
    if unknown:
        raise ConfigError(
            f"--text-template: unknown placeholder {{{unknown[0]}}} (known: "
            "{prompt}, {response}, {system})"
        )
    missing = [name for name in ("prompt", "response") if name not in names]
    if missing:
        raise ConfigError(f"--text-template must contain {{{missing[0]}}}")
    return decode_escapes(template)


def render_text(example: Example, template: str) -> str:
    """Render one single-turn example; multi-turn examples raise TemplateError."""
    if not example.is_single_turn():
        raise TemplateError(
            f"has {len(example.turns())} turns; a text template renders one "
            "prompt and one response (write messages instead)"
        )
    if example.system is not None and "{system}" not in template:
        raise TemplateError("has a system message but the template has no {system} placeholder")
    values = {
        "prompt": example.prompt,
        "response": example.response,
        "system": example.system or "",
    }
    # One pass over the template, so a '{response}' typed inside a prompt stays literal.
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), decode_escapes(template))
