"""The search space: which `finetune` options a study varies, and how.

```yaml
params:
  lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
  lora_r: {type: categorical, choices: [4, 8, 16, 32]}
  max_steps: {type: int, low: 20, high: 80, step: 20}
  target_modules: {type: categorical, choices: [[q_proj, v_proj], [all-linear]]}
first:                 # trials to run before the sampler takes over (e.g. today's config)
  - {lr: 2.0e-4, lora_r: 16}
```

Every name is a `FinetuneConfig` field and every value is checked against that field's type
and limits up front, with the file and line in the error. Optuna only takes scalar choices, so a
list choice travels as its comma-joined label (`q_proj,v_proj`) and is turned back here.

A preference study (`objective: dpo|orpo|simpo` in the base config) may search its objective's
own options (`beta`; `orpo_lambda`, `simpo_gamma`); `check_objective` refuses them for any
other objective. The objective itself is fixed: losses of two objectives do not compare.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, TypeAdapter, ValidationError

from slmforge.config import StrictModel, load_yaml
from slmforge.config.finetune import FinetuneConfig, objective_options, objective_takers
from slmforge.errors import ConfigError

# fields a study may not vary: they say what is trained on what and where it goes
FIXED_FIELDS = frozenset(
    {"model", "data", "eval_data", "out", "force", "resume", "nproc", "merge", "device"}
)
# why `objective` cannot be searched: eval_loss means a different loss for each objective
OBJECTIVE_FIXED = (
    "one objective per study (each has its own loss, so their eval_loss values do not "
    "compare); set it in --base-config"
)


class FloatParam(StrictModel):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)


class IntParam(StrictModel):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, gt=0)


class CategoricalParam(StrictModel):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class SpaceFile(StrictModel):
    params: dict[str, Param] = Field(min_length=1)
    first: list[dict[str, Any]] = Field(default_factory=list)


DEFAULT_SPACE = {
    "params": {
        "lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "lora_r": {"type": "categorical", "choices": [4, 8, 16, 32]},
        "lora_alpha": {"type": "categorical", "choices": [8, 16, 32, 64]},
        "lora_dropout": {"type": "float", "low": 0.0, "high": 0.2},
    }
}


class Space:
    """A validated search space: `suggest(trial)` -> finetune option values."""

    def __init__(
        self,
        params: dict[str, Param],
        first: list[dict[str, Any]],
        locations: dict[str, str] | None = None,
    ) -> None:
        self.params = params
        self.first = first
        self.locations = locations or {}  # name -> "space.yaml:3: ", for errors found later

    def check_objective(self, objective: str) -> None:
        """Refuse an objective's own option (beta, orpo_lambda, simpo_gamma) in a study of
        another objective, where every trial would ignore or reject it."""
        own = objective_options(objective)
        for name in self.params:
            takers = objective_takers(name)
            if takers and name not in own:
                raise ConfigError(
                    f"{self.locations.get(name, '')}params.{name}: does not apply to objective "
                    f"{objective} (it applies to {', '.join(takers)}); set `objective: "
                    f"{takers[0]}` in --base-config to search it"
                )

    def label(self, name: str, value: Any) -> Any:
        """What Optuna stores for `value` of `name` (lists as comma-joined strings)."""
        return ",".join(map(str, value)) if isinstance(value, list) else value

    def value(self, name: str, label: Any) -> Any:
        """The option value behind an Optuna label."""
        param = self.params[name]
        if isinstance(param, CategoricalParam):
            for choice in param.choices:
                if self.label(name, choice) == label:
                    return choice
        return label

    def suggest(self, trial: Any) -> dict[str, Any]:
        values = {}
        for name, param in self.params.items():
            if isinstance(param, CategoricalParam):
                labels = [self.label(name, c) for c in param.choices]
                values[name] = self.value(name, trial.suggest_categorical(name, labels))
            elif isinstance(param, IntParam):
                values[name] = trial.suggest_int(
                    name, param.low, param.high, step=param.step, log=param.log
                )
            else:
                values[name] = trial.suggest_float(
                    name, param.low, param.high, step=param.step, log=param.log
                )
        return values

    def labels(self, values: dict[str, Any]) -> dict[str, Any]:
        return {name: self.label(name, value) for name, value in values.items()}

    def grid(self) -> dict[str, list[Any]]:
        """Every point of each parameter, for the grid sampler."""
        grid: dict[str, list[Any]] = {}
        for name, param in self.params.items():
            if isinstance(param, CategoricalParam):
                grid[name] = [self.label(name, c) for c in param.choices]
            elif isinstance(param, IntParam):
                grid[name] = list(range(param.low, param.high + 1, param.step))
            elif param.step is not None:
                count = math.floor((param.high - param.low) / param.step + 1e-9) + 1
                grid[name] = [param.low + i * param.step for i in range(count)]
            else:
                raise ConfigError(
                    f"--sampler grid: {name} is a float range without a step; give it a "
                    "step or use type: categorical with choices"
                )
        return grid

    def grid_size(self) -> int:
        return math.prod(len(points) for points in self.grid().values())


def load_space(path: Path | None) -> Space:
    """The space in `path` (or the default one), checked against FinetuneConfig."""
    if path is None:
        return _validated(DEFAULT_SPACE, "default space: ", {})
    data = load_yaml(path)
    lines = _key_lines(path)
    return _validated(data, f"{path}: ", lines)


def _validated(data: dict[str, Any], prefix: str, lines: dict[str, int]) -> Space:
    def where(name: str) -> str:
        line = lines.get(name)
        return f"{prefix.removesuffix(': ')}:{line}: " if line else prefix

    for name in (data.get("params") or {}) if isinstance(data.get("params"), dict) else {}:
        _check_name(name, where(name))
    try:
        parsed = SpaceFile.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(p) for p in error["loc"] if p not in ("float", "int", "categorical")]
        at = where(loc[1]) if len(loc) > 1 and loc[0] == "params" else prefix
        raise ConfigError(f"{at}{'.'.join(loc)}: {error['msg']}") from None
    for name, param in parsed.params.items():
        _check_param(name, param, where(name))
    space = Space(parsed.params, parsed.first, {name: where(name) for name in parsed.params})
    for index, point in enumerate(parsed.first):
        _check_point(space, point, f"{where('first')}first[{index}]")
    return space


def _check_name(name: str, at: str) -> None:
    fields = FinetuneConfig.model_fields
    if name not in fields:
        import difflib

        guess = difflib.get_close_matches(name, list(fields), n=1)
        hint = f", did you mean {guess[0]}?" if guess else ""
        raise ConfigError(f"{at}params.{name}: not a finetune option{hint}")
    if name == "objective":
        raise ConfigError(f"{at}params.objective: {OBJECTIVE_FIXED}")
    if name in FIXED_FIELDS:
        raise ConfigError(f"{at}params.{name}: fixed for the whole study, it cannot be searched")


def _check_value(name: str, value: Any, at: str) -> None:
    field = FinetuneConfig.model_fields[name]
    kind = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    try:
        TypeAdapter(kind).validate_python(value)
    except ValidationError as exc:
        raise ConfigError(f"{at}: {exc.errors()[0]['msg']}") from None


def _check_param(name: str, param: Param, at: str) -> None:
    if isinstance(param, CategoricalParam):
        for index, choice in enumerate(param.choices):
            _check_value(name, choice, f"{at}params.{name}.choices[{index}]")
        return
    if param.low >= param.high:
        raise ConfigError(f"{at}params.{name}: low {param.low} must be below high {param.high}")
    if param.log and param.low <= 0:
        raise ConfigError(f"{at}params.{name}: a log range needs low > 0")
    if param.log and (param.step not in (None, 1)):
        raise ConfigError(f"{at}params.{name}: log and step cannot be combined")
    for bound in ("low", "high"):
        _check_value(name, getattr(param, bound), f"{at}params.{name}.{bound}")


def _check_point(space: Space, point: dict[str, Any], at: str) -> None:
    for name, value in point.items():
        if name not in space.params:
            raise ConfigError(f"{at}.{name}: not in params; first trials set searched options")
        param = space.params[name]
        if isinstance(param, CategoricalParam):
            if value not in param.choices:
                raise ConfigError(f"{at}.{name}: {value!r} is not one of {param.choices}")
        elif not param.low <= value <= param.high:
            raise ConfigError(f"{at}.{name}: {value} is outside [{param.low}, {param.high}]")


def _key_lines(path: Path) -> dict[str, int]:
    """Line of each parameter under `params`, and of `first`, for error messages."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key, value in root.value:
        if key.value == "first":
            lines["first"] = key.start_mark.line + 1
        if key.value == "params" and isinstance(value, yaml.MappingNode):
            for name, _ in value.value:
                lines[name.value] = name.start_mark.line + 1
    return lines
