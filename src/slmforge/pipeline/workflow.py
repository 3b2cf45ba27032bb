"""Workflow files: read, apply `--set` overrides, resolve `${stage.output}`, validate each stage.

```yaml
runs_dir: runs                  # where run records go (default: runs)
stages:
  base:      {uses: tiny_model, arch: llama, out: out/base}
  sample:    {out: out/travel.jsonl}              # `uses` defaults to the stage's name
  split:     {input: "${sample.output}", out_dir: out/split}
  finetune:  {model: "${base.output}", data: "${split.output}/train.jsonl", out: out/adapter}
  eval:      {after: [deploy], target: [deploy:travel-bot], ...}   # `after`: order without a path
```

Every stage validates through its stage's config model, so a workflow accepts exactly the options
the matching command does, and errors name the file and the YAML path
(`wf.yaml: stages.finetune.lora_rank: unknown field, did you mean lora_r?`). Everything is checked
before any stage runs: unknown stages and keys, references to missing stages, and cycles.
Secrets never go in the file: options like `api_key_env` name the environment variable to read.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from slmforge.config import load_yaml, validate
from slmforge.errors import ConfigError
from slmforge.pipeline.graph import topological_order
from slmforge.pipeline.stages import STAGE_KINDS, StageKind

REFERENCE = re.compile(r"\$\{([^}]*)\}")
STAGE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
TOP_KEYS = ("runs_dir", "stages")


@dataclass
class Stage:
    name: str
    kind: StageKind
    config: BaseModel
    needs: list[str]  # the stages this one references, in the order they appear

    @property
    def output(self) -> Path | None:
        field = self.kind.output_field
        return None if field is None else Path(getattr(self.config, field))


@dataclass
class Workflow:
    path: Path
    runs_dir: Path
    stages: dict[str, Stage]  # in the order they run

    def dependents(self, names: set[str]) -> set[str]:
        """`names` and every stage that needs one of them, directly or not."""
        found = set(names)
        for stage in self.stages.values():
            if found.intersection(stage.needs):
                found.add(stage.name)
        return found


def _guess(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f", did you mean {close[0]}?" if close else f" (known: {', '.join(known)})"


def parse_override(text: str) -> tuple[list[str], Any]:
    """`stages.finetune.max_steps=50` -> (["stages", "finetune", "max_steps"], 50)."""
    key, sep, value = text.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(keys):
        raise ConfigError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. stages.finetune.lr=1e-4")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return keys, parsed


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each `KEY.PATH=VALUE` (a YAML value) in `data`; stages must exist already."""
    for text in overrides:
        keys, value = parse_override(text)
        if keys[0] not in TOP_KEYS:
            guess = _guess(keys[0], list(TOP_KEYS))
            raise ConfigError(f"--set {text!r}: unknown top-level key {keys[0]!r}{guess}")
        if keys[0] == "stages":
            stages = data.get("stages") or {}
            if len(keys) < 3:
                raise ConfigError(f"--set {text!r}: expected stages.STAGE.OPTION=VALUE")
            if keys[1] not in stages:
                raise ConfigError(
                    f"--set {text!r}: no stage {keys[1]!r}{_guess(keys[1], list(stages))}"
                )
        node = data
        for depth, key in enumerate(keys[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(f"--set {text!r}: {where} is not a mapping")
        node[keys[-1]] = value
    return data


def _references(value: Any, where: str) -> list[tuple[str, str, str]]:
    """Every `${stage.attr}` in `value` as (stage, attr, YAML path)."""
    if isinstance(value, str):
        return [(*_split_reference(m.group(1), where), where) for m in REFERENCE.finditer(value)]
    if isinstance(value, list):
        return [r for i, item in enumerate(value) for r in _references(item, f"{where}[{i}]")]
    if isinstance(value, dict):
        return [r for k, item in value.items() for r in _references(item, f"{where}.{k}")]
    return []


def _split_reference(text: str, where: str) -> tuple[str, str]:
    stage, dot, attr = text.strip().rpartition(".")
    if not dot or not stage:
        raise ConfigError(
            f"{where}: ${{{text}}} is not a stage reference; use ${{STAGE.output}} "
            "(secrets come from environment variables named by options like api_key_env)"
        )
    return stage, attr


def _substitute(value: Any, outputs: dict[str, str]) -> Any:
    if isinstance(value, str):
        return REFERENCE.sub(lambda m: outputs[m.group(1).strip().rpartition(".")[0]], value)
    if isinstance(value, list):
        return [_substitute(item, outputs) for item in value]
    if isinstance(value, dict):
        return {k: _substitute(item, outputs) for k, item in value.items()}
    return value


def _stage_kind(name: str, body: dict[str, Any], where: str) -> StageKind:
    kind_name = body.pop("uses", name)
    kind = STAGE_KINDS.get(str(kind_name))
    if kind is None:
        label = f"{where}.uses" if kind_name != name else where
        raise ConfigError(
            f"{label}: unknown stage kind {kind_name!r}{_guess(str(kind_name), list(STAGE_KINDS))}"
            " (name the kind with `uses:` when the stage has another name)"
        )
    return kind


def _after(body: dict[str, Any], where: str) -> list[str]:
    after = body.pop("after", [])
    after = [after] if isinstance(after, str) else after
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise ConfigError(f"{where}.after: expected a list of stage names")
    return after


def _raw_stages(data: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown key{_guess(unknown[0], list(TOP_KEYS))}")
    stages = data.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise ConfigError(f"{path}: stages: expected a mapping of stage names to options")
    raw: dict[str, dict[str, Any]] = {}
    for name, body in stages.items():
        if not STAGE_NAME.match(str(name)):
            raise ConfigError(f"{path}: stages.{name}: use letters, digits, '_' and '-' in names")
        if body is not None and not isinstance(body, dict):
            raise ConfigError(f"{path}: stages.{name}: expected a mapping of options")
        raw[str(name)] = dict(body or {})  # `sample:` alone takes every default
    return raw


def _needs(body: dict[str, Any], kinds: dict[str, StageKind], where: str) -> list[str]:
    """The stages to run first: the `after:` list, then the stages referenced."""
    needs: list[str] = []
    for stage in _after(body, where):
        if stage not in kinds:
            raise ConfigError(f"{where}.after: unknown stage {stage!r}{_guess(stage, list(kinds))}")
        needs.append(stage)
    for stage, attr, at in _references(body, where):
        if stage not in kinds:
            guess = _guess(stage, list(kinds))
            raise ConfigError(f"{at}: reference to unknown stage {stage!r}{guess}")
        if attr != "output":
            raise ConfigError(f"{at}: ${{{stage}.{attr}}}: stages only have .output")
        if kinds[stage].output_field is None:
            raise ConfigError(f"{at}: stage {stage!r} ({kinds[stage].name}) has no output")
        if stage not in needs:
            needs.append(stage)
    return needs


def parse_workflow(data: dict[str, Any], path: Path) -> Workflow:
    """Validate a workflow mapping (already overridden) into stages in run order."""
    raw = _raw_stages(data, path)
    kinds = {name: _stage_kind(name, body, f"{path}: stages.{name}") for name, body in raw.items()}
    needs = {name: _needs(body, kinds, f"{path}: stages.{name}") for name, body in raw.items()}
    order = topological_order(needs, f"{path}: stages")
    stages: dict[str, Stage] = {}
    outputs: dict[str, str] = {}
    for name in order:
        kind = kinds[name]
        values = _substitute(raw[name], outputs)
        config = validate(kind.config, values, prefix=f"{path}: stages.{name}")
        stage = Stage(name, kind, config, needs[name])
        stages[name] = stage
        if stage.output is not None:
            outputs[name] = str(stage.output)
    return Workflow(path, Path(data.get("runs_dir") or "runs"), stages)


def load_workflow(path: str | Path, overrides: list[str] | None = None) -> Workflow:
    path = Path(path)
    return parse_workflow(apply_overrides(load_yaml(path), list(overrides or [])), path)
