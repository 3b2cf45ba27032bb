"""The stage kinds a workflow can use: each is a config model, its output field and a function.

Registering a kind is one `StageKind` entry; the runner has no per-stage code. Every function
takes the validated config (with `force` set by the runner when it replaces its own earlier
output) and returns nothing: stages talk to each other only through their output paths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from slmforge.config import StrictModel
from slmforge.config.data import (
    AugmentConfig,
    ConvertConfig,
    SampleConfig,
    SplitConfig,
    ValidateConfig,
)
from slmforge.config.evaluate import EvalConfig
from slmforge.config.finetune import FinetuneConfig, MergeConfig
from slmforge.config.models import TinyModelConfig
from slmforge.config.optimize import OptimizeConfig
from slmforge.config.tune import TuneConfig
from slmforge.errors import DataError, RunError


@dataclass(frozen=True)
class StageKind:
    name: str
    config: type[BaseModel]
    output_field: str | None  # the field holding the path `${stage.output}` stands for
    run: Callable[[Any], None]
    summary: str
    deployment_field: str | None = None  # the field naming a deployment the stage starts
    # environment variables (secrets) the stage hands to the stages after it in a run
    env: Callable[[Any], dict[str, str]] | None = None


class DeployStageConfig(StrictModel):
    """A `deploy` stage: `slmforge deploy create`, with the key written to a file."""

    name: str = Field(description="Deployment name (lowercase letters, digits, '-').")
    model: str = Field(description="Model, adapter or ONNX folder to serve.")
    adapter: list[str] = Field(default_factory=list, description="NAME=PATH of another adapter.")
    engine: Literal["auto", "torch", "onnx"] = Field("auto", description="Runtime.")
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(0, ge=0, le=65535, description="Port; 0 picks a free one.")
    key_file: Path = Field(
        description="Where the API key is written (mode 600); the stages after this one get "
        "it as $SLMFORGE_API_KEY, so `deploy:NAME` targets work."
    )
    force: bool = Field(False, description="Replace a deployment of this name and the key file.")


def _tiny_model(cfg: TinyModelConfig) -> None:
    from slmforge.models.tiny import build

    build(cfg.arch, cfg.out, cfg.size, cfg.pretrain_steps, cfg.seed, cfg.force)


def _sample(cfg: SampleConfig) -> None:
    from slmforge.data.sample import write_sample

    write_sample(cfg.out, cfg.force, cfg.kind, cfg.count, cfg.seed)


def _convert(cfg: ConvertConfig) -> None:
    from slmforge.data.writing import run_convert

    run_convert(cfg)


def _validate(cfg: ValidateConfig) -> None:
    from slmforge.data.validate import run_validate

    report = run_validate(cfg)
    if report.errors and not cfg.drop_invalid:
        raise DataError(report.findings)


def _split(cfg: SplitConfig) -> None:
    from slmforge.data.split import run_split

    run_split(cfg)


def _augment(cfg: AugmentConfig) -> None:
    from slmforge.data.augment import augment

    result = augment(cfg)
    if not result.complete:
        raise RunError(
            f"augment stopped at its request or time bound ({result.units_done}/"
            f"{result.units} units); raise the bound or rerun with resume: true"
        )


def _tune(cfg: TuneConfig) -> None:
    from slmforge.tune.run import tune

    tune(cfg)


def _finetune(cfg: FinetuneConfig) -> None:
    from slmforge.train.run import run_finetune

    run_finetune(cfg)


def _merge(cfg: MergeConfig) -> None:
    from slmforge.train.run import run_merge

    run_merge(cfg)


def _optimize(cfg: OptimizeConfig) -> None:
    from slmforge.optimize.run import optimize

    optimize(cfg)


def _eval(cfg: EvalConfig) -> None:
    from slmforge.evaluate.runner import run_eval
    from slmforge.evaluate.summary import check_gates

    result = run_eval(cfg)
    check_gates(result.summary, result.out)


def _deploy(cfg: DeployStageConfig) -> None:
    from slmforge.serve import deployments

    deployments.create_with_key_file(
        cfg.name, cfg.model, cfg.adapter, cfg.engine, cfg.host, cfg.port, cfg.key_file, cfg.force
    )


def _deploy_env(cfg: DeployStageConfig) -> dict[str, str]:
    from slmforge.runtime.specs import DEPLOYMENT_KEY_ENV

    if not cfg.key_file.is_file():
        return {}
    return {DEPLOYMENT_KEY_ENV: cfg.key_file.read_text(encoding="utf-8").strip()}


STAGE_KINDS: dict[str, StageKind] = {
    kind.name: kind
    for kind in (
        StageKind("tiny_model", TinyModelConfig, "out", _tiny_model, "build a tiny model"),
        StageKind("sample", SampleConfig, "out", _sample, "write the sample data"),
        StageKind("convert", ConvertConfig, "out", _convert, "convert a data file"),
        StageKind("validate", ValidateConfig, None, _validate, "check data files"),
        StageKind("split", SplitConfig, "out_dir", _split, "split a data file"),
        StageKind("augment", AugmentConfig, "out", _augment, "augment a data file"),
        StageKind("finetune", FinetuneConfig, "out", _finetune, "fine-tune"),
        StageKind("tune", TuneConfig, "out", _tune, "search fine-tuning options"),
        StageKind("merge", MergeConfig, "out", _merge, "merge an adapter"),
        StageKind("optimize", OptimizeConfig, "out", _optimize, "build an ONNX model"),
        StageKind("eval", EvalConfig, "out", _eval, "evaluate targets"),
        StageKind(
            "deploy",
            DeployStageConfig,
            "key_file",
            _deploy,
            "start a deployment",
            "name",
            _deploy_env,
        ),
    )
}
