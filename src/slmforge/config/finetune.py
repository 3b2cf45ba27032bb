"""Options of `slmforge finetune` and `slmforge merge`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from slmforge.config import StrictModel
from slmforge.config.data import ReadOptions
from slmforge.config.methods import (
    FINETUNE_METHODS,
    OBJECTIVES,
    MethodName,
    ObjectiveName,
    get_finetune_method,
    get_objective,
    methods_help,
    objectives_help,
)

Device = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["auto", "fp32", "bf16", "fp16", "bf16-weights"]


class FinetuneConfig(ReadOptions):
    model: str = Field(description="Base model: hub id or local folder.")
    data: Path = Field(description="Training data (any format `slmforge data` reads).")
    eval_data: Path | None = Field(None, description="Held-out data for eval loss/accuracy.")
    out: Path = Field(description="Output folder (adapter, or full model for --method full).")
    method: MethodName = Field("lora", description=f"{methods_help()}.")
    objective: ObjectiveName = Field(
        "sft",
        description=f"Training objective: {objectives_help()}. sft trains on examples; the "
        "others on preference pairs (prompt, chosen, rejected).",
    )
    beta: float | None = Field(
        None,
        gt=0,
        description="Preference strength: DPO's beta (default 0.1), SimPO's reward scale "
        "(default 2.0). Not for sft or orpo.",
    )
    dpo_nll_weight: float = Field(
        0.0,
        ge=0,
        description="DPO: weight of an NLL term on the chosen answer (its mean per-token loss; "
        "RPO, TRL's rpo_alpha), which keeps the preferred answer's likelihood from falling as "
        "the margin grows. 0: plain DPO.",
    )
    orpo_lambda: float = Field(
        0.1, gt=0, description="ORPO: weight of the odds-ratio loss beside the SFT loss."
    )
    simpo_gamma: float = Field(
        0.5, ge=0, description="SimPO: target reward margin between chosen and rejected."
    )
    max_steps: int | None = Field(None, gt=0, description="Optimizer steps (overrides epochs).")
    epochs: float = Field(1.0, gt=0, description="Passes over the data when --max-steps is unset.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping (0 = off).")
    batch_size: int = Field(
        4, gt=0, description="Rows per micro-batch, split across --nproc processes."
    )
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    max_seq_len: int = Field(1024, gt=8, description="Longer examples are truncated.")
    packing: bool = Field(False, description="Pack examples into rows (no padding, no leaks).")
    group_by_length: bool = Field(
        True,
        description="Batch rows of similar length together (less padding; like Hugging Face's "
        "group_by_length). No effect with --packing.",
    )
    share_prefix: bool = Field(
        True,
        description="Run the opening that a micro-batch's rows share (system prompt, tool "
        "definitions) once, and each row's remainder on top of its cache; same losses. Used "
        "where it saves at least 64 token passes; not with --packing, gradient checkpointing "
        "or several processes.",
    )
    lora_r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=list,
        description="Modules to adapt (default per architecture; 'all-linear' for every linear).",
    )
    train_on_prompt: bool = Field(False, description="Compute loss on prompt tokens too.")
    text_template: str | None = Field(
        None,
        description=r"Template for models without a chat template, e.g. "
        r"'<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|>'.",
    )
    seed: int = Field(42)
    log_every: int = Field(10, gt=0, description="Steps between metric records.")
    eval_every: int | None = Field(None, gt=0, description="Steps between evaluations.")
    save_every: int | None = Field(None, gt=0, description="Steps between checkpoints.")
    samples: int = Field(3, ge=0, description="Sample generations from the eval set afterwards.")
    device: Device = Field("auto")
    precision: Precision = Field(
        "auto",
        description="auto: bf16/fp16 on CUDA; on CPU, under adapters, a bf16 checkpoint keeps "
        "its base in bf16: computed in bf16 where the CPU does so natively (AVX512-BF16 or "
        "AMX), else in fp32 (bf16-weights: half the weight memory, ~10% slower than fp32); fp32 "
        "otherwise.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in backward (switched on by itself when only that "
        "makes the run fit in memory).",
    )
    nproc: int = Field(1, gt=0, description="Data-parallel processes (torchrun) on this machine.")
    merge: bool = Field(False, description="Also write a merged full model to OUT/merged.")
    resume: bool = Field(False, description="Continue from the last checkpoint of OUT.")
    force: bool = Field(False, description="Replace OUT if it exists.")
    strict_memory: bool = Field(
        False,
        description="Stop when the memory estimate does not fit as asked (instead of switching "
        "on gradient checkpointing).",
    )
    allow_pickle: bool = Field(False, description="Allow loading pickle (.bin) checkpoints.")
    trust_remote_code: bool = Field(False)

    @model_validator(mode="after")
    def _check_combinations(self) -> FinetuneConfig:
        if self.merge and not get_finetune_method(self.method).adapter:
            adapters = ", ".join(m.name for m in FINETUNE_METHODS.values() if m.adapter)
            raise ValueError(f"--merge only applies to adapter methods ({adapters})")
        objective = get_objective(self.objective)
        if self.beta is not None and objective.default_beta is None:
            raise ValueError(f"--beta does not apply to --objective {self.objective}")
        if self.dpo_nll_weight and self.objective != "dpo":
            raise ValueError(f"--dpo-nll-weight does not apply to --objective {self.objective}")
        if objective.pairs and self.packing:
            raise ValueError(f"--packing does not apply to --objective {self.objective}")
        if self.resume and self.force:
            raise ValueError("--resume and --force contradict each other; pick one")
        return self

    @property
    def effective_beta(self) -> float | None:
        """--beta, or the objective's default (None for objectives without one)."""
        return self.beta if self.beta is not None else get_objective(self.objective).default_beta


def objective_options(objective: str) -> tuple[str, ...]:
    """The FinetuneConfig fields only `objective` reads: `beta` where it has a default beta,
    and the fields named after it (`orpo_lambda`, `simpo_gamma`). The jobs API and `tune`
    refuse them for any other objective instead of ignoring them."""
    beta = ("beta",) if get_objective(objective).default_beta is not None else ()
    own = tuple(n for n in FinetuneConfig.model_fields if n.startswith(f"{objective}_"))
    return beta + own


def objective_takers(option: str) -> list[str]:
    """The objectives that read `option` (empty: an option of every objective)."""
    return [name for name in OBJECTIVES if option in objective_options(name)]


class MergeConfig(StrictModel):
    adapter: Path = Field(description="PEFT adapter folder written by `slmforge finetune`.")
    out: Path = Field(description="Output folder for the merged model.")
    base: str | None = Field(None, description="Base model (default: from the adapter).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto")
    force: bool = Field(False, description="Replace OUT if it exists.")
    allow_pickle: bool = Field(False)
    trust_remote_code: bool = Field(False)
