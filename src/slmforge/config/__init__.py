"""Typed config: pydantic models for every stage, the one source of options, YAML and validation.

Each stage has its own module here (data.py, models.py, ...). CLI options are generated from
these models (see `slmforge.cli.options`), workflow YAML and API requests validate through them,
and validation errors name the field and what was expected.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from slmforge.errors import ConfigError, InputError


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


M = TypeVar("M", bound=BaseModel)


def _field_label(loc: tuple[Any, ...], prefix: str, option_keys: frozenset[str]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in option_keys:
        return "--" + parts[0].replace("_", "-")
    label = ".".join(parts)
    return f"{prefix}.{label}" if prefix and not prefix.endswith(": ") else f"{prefix}{label}"


def _error_line(
    model: type[BaseModel], error: dict[str, Any], prefix: str, option_keys: frozenset[str]
) -> str:
    loc = tuple(error["loc"])
    if not loc and error["type"] == "value_error":  # a model validator names its fields itself
        sep = ": " if prefix and not prefix.endswith(": ") else ""  # after a YAML path
        return f"{prefix}{sep}{error['msg'].removeprefix('Value error, ')}"
    label = _field_label(loc, prefix, option_keys)
    if error["type"] == "extra_forbidden":
        known = _known_fields(model, loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f", did you mean {guess[0]}?" if guess else f" (known: {', '.join(known)})"
        return f"{label}: unknown field{hint}"
    if error["type"] == "missing":
        return f"{label}: required"
    return f"{label}: {error['msg']}"


def _known_fields(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in path:
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return []
        current = fields[part].annotation
    return sorted(getattr(current, "model_fields", {}))


def validation_message(
    model: type[BaseModel],
    exc: ValidationError,
    prefix: str = "",
    option_keys: frozenset[str] = frozenset(),
) -> str:
    """One line per problem: `stages.finetune.lora_rank: unknown field, did you mean lora_r?`.

    Fields named in `option_keys` came from the command line and are shown as `--options`;
    the others are shown as keys under `prefix` (a file name ending in ": ", or a YAML path).
    """
    return "; ".join(_error_line(model, e, prefix, option_keys) for e in exc.errors())


def validate(
    model: type[M],
    values: dict[str, Any],
    prefix: str = "",
    option_keys: frozenset[str] | set[str] = frozenset(),
) -> M:
    """Validate `values` into `model`, raising a ConfigError that names every bad field."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(validation_message(model, exc, prefix, frozenset(option_keys))) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with the file and line in the error when it is malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level")
    return data


def parse_adapter_options(values: list[str]) -> dict[str, Path]:
    """`--adapter NAME=PATH` values -> `{name: Path}`; serve, chat and deploy share it."""
    adapters: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise InputError(f"--adapter {value!r}: expected NAME=PATH, e.g. travel=out/adapter")
        if name.strip() in adapters:
            raise InputError(f"--adapter {name.strip()!r} is given twice")
        adapters[name.strip()] = Path(path.strip())
    return adapters
