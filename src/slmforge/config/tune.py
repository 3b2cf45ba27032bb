"""Options of `slmforge tune`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from slmforge.config import StrictModel


class TuneConfig(StrictModel):
    model: str = Field(description="Base model: hub id or local folder.")
    data: Path = Field(description="Training data (any format `slmforge data` reads).")
    eval_data: Path = Field(description="Held-out data the objective is measured on.")
    out: Path = Field(description="Output folder: study, trials, best config, adapter, report.")
    space: Path | None = Field(
        None, description="Search space YAML (default: learning rate, LoRA r/alpha/dropout)."
    )
    base_config: Path | None = Field(
        None, description="finetune YAML with the options every trial shares (e.g. max_steps)."
    )
    trials: int = Field(20, gt=0, description="Finished trials the study should have.")
    parallel: int = Field(1, gt=0, description="Trials run at the same time.")
    timeout_s: float | None = Field(
        None, gt=0, description="Time budget in seconds: no trial starts or runs past it."
    )
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="How trials are chosen.")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="Stop bad trials early from their intermediate eval loss."
    )
    objective: str = Field(
        "eval_loss",
        description="eval_loss; eval_reward_accuracy or eval_reward_margin for a preference "
        "objective (dpo, orpo, simpo in --base-config); or a `slmforge eval` metric (e.g. "
        "rougeL) for sft.",
    )
    objective_rows: int = Field(
        50, gt=0, description="Eval rows answered per trial for a metric objective."
    )
    evals_per_trial: int = Field(
        4, gt=0, description="Evaluations per trial for pruning (when --eval-every is unset)."
    )
    backend: Literal["optuna", "ray"] = Field(
        "optuna", description="optuna: processes on this machine; ray: Ray Tune."
    )
    ray_address: str | None = Field(
        None, description="Existing Ray cluster (e.g. ray://head:10001); default: local Ray."
    )
    storage: str | None = Field(
        None, description="Optuna storage URL (default: sqlite in OUT/study.db)."
    )
    seed: int = Field(0, description="Seed of the sampler.")
    resume: bool = Field(False, description="Continue (or join) the study in OUT.")
    force: bool = Field(False, description="Delete OUT and start a new study.")

    @model_validator(mode="after")
    def _check_combinations(self) -> TuneConfig:
        if self.resume and self.force:
            raise ValueError("--resume and --force contradict each other; pick one")
        if self.ray_address and self.backend != "ray":
            raise ValueError("--ray-address needs --backend ray")
        return self
