"""Typer commands generated from pydantic config models, so options have one source of truth.

`@model_command(app, "convert", ConvertConfig, arguments=("input",))` gives the command one
option per model field (`--kebab-case`, the field's description as help, its default shown),
an optional `--config FILE.yaml` with the same fields, and calls the function with a validated
model. Options given on the command line override the YAML file.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from slmforge.config import load_yaml, validate

_SCALARS = (str, int, float, bool, Path)


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def cli_type(annotation: Any) -> Any | None:
    """The CLI type for a field, or None when the field is YAML-only (dicts, nested models)."""
    inner = _unwrap_optional(annotation)
    if inner in _SCALARS or get_origin(inner) is Literal:
        return inner
    if get_origin(inner) is list:
        (item,) = get_args(inner) or (str,)
        if get_origin(item) is Literal:
            return list[str]  # typer has no lists of choices; the model checks the values
        if item in _SCALARS:
            return list[item]  # type: ignore[valid-type]
    return None


def _help_text(field: FieldInfo) -> str:
    text = field.description or ""
    # get_default also covers default_factory fields (their `.default` is PydanticUndefined)
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    if default not in (None, [], (), False):
        if get_origin(_unwrap_optional(field.annotation)) is list:
            default = ",".join(map(str, default))
        text += f" (default: {default})"
    return text.strip()


def _parameter(name: str, field: FieldInfo, kind: Any, argument: bool) -> inspect.Parameter:
    if argument:
        info: Any = typer.Argument(help=_help_text(field), show_default=False)
        default = None if not field.is_required() else ...
        annotation = Annotated[kind | None, info] if default is None else Annotated[kind, info]
        return inspect.Parameter(
            name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=default if default is None else inspect.Parameter.empty,
            annotation=annotation,
        )
    flag = "--" + name.replace("_", "-")
    decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
    info = typer.Option(*decls, help=_help_text(field), show_default=False)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind | None, info]
    )


def _given(value: Any) -> bool:
    return value is not None and value != [] and value != ()


def model_command(
    app: typer.Typer,
    name: str,
    model: type[BaseModel],
    *,
    arguments: tuple[str, ...] = (),
    config_file: bool = False,
    help: str | None = None,
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register `fn(config)` as a typer command whose options come from `model`'s fields."""

    def decorator(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        app.command(name)(model_function(model, fn, arguments, config_file, help))
        return fn

    return decorator


def model_group_callback(
    group: typer.Typer, model: type[BaseModel], *, help: str | None = None
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register `fn(config)` as what `group` does when invoked without a subcommand (e.g.
    `slmforge app` runs the app, `slmforge app compare` a subcommand). Options are validated
    only then, so a subcommand does not need the group's required options."""

    def decorator(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        command = model_function(model, fn, (), False, help)

        def callback(ctx: typer.Context, **kwargs: Any) -> None:
            if ctx.invoked_subcommand is None:
                command(**kwargs)

        context = inspect.Parameter(
            "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
        )
        signature = inspect.signature(command)
        params = [context, *signature.parameters.values()]
        callback.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        callback.__annotations__ = {"ctx": typer.Context, **command.__annotations__}
        callback.__doc__ = command.__doc__
        group.callback(invoke_without_command=True)(callback)
        return fn

    return decorator


def model_function(
    model: type[BaseModel],
    fn: Callable[[Any], None],
    arguments: tuple[str, ...] = (),
    config_file: bool = False,
    help: str | None = None,
) -> Callable[..., None]:
    """A function typer can register whose parameters are `model`'s fields (and `--config`);
    it validates them into `model` and calls `fn(config)`."""
    params = []
    for arg in arguments:
        field = model.model_fields[arg]
        params.append(_parameter(arg, field, cli_type(field.annotation), argument=True))
    # Required options first: they are what a user must type.
    fields = sorted(model.model_fields.items(), key=lambda item: not item[1].is_required())
    for field_name, field in fields:
        kind = cli_type(field.annotation)
        if field_name in arguments or kind is None:
            continue
        params.append(_parameter(field_name, field, kind, argument=False))
    if config_file:
        params.append(
            inspect.Parameter(
                "config",
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    Path | None,
                    typer.Option(
                        "--config",
                        help="YAML file with the same options; command-line options win.",
                        show_default=False,
                    ),
                ],
            )
        )

    def command(**kwargs: Any) -> None:
        config_path = kwargs.pop("config", None)
        values = load_yaml(config_path) if config_path else {}
        given = {k: v for k, v in kwargs.items() if _given(v)}
        values.update(given)
        prefix = f"{config_path}: " if config_path else ""
        # Required fields missing everywhere are named as options: that is where users add them.
        option_keys = set(given) | (set(model.model_fields) - set(values))
        fn(validate(model, values, prefix=prefix, option_keys=option_keys))

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = help or fn.__doc__
    command.__name__ = fn.__name__
    return command
