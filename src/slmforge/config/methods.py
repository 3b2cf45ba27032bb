"""The fine-tuning methods and training objectives, by name, with the traits everything else reads.

A method says how the model is loaded and what is trained (an adapter over frozen weights, or
every weight); an objective says what the loss is. The CLI and config choices, the workflow
stage, the fine-tuning jobs API's `method.type`, the memory estimate and `slmforge doctor` all
derive from these two tables; the training hooks of each method live in `train/methods.py`
under the same name. Adding one is one entry here plus its hooks there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class FinetuneMethod:
    name: str
    summary: str
    adapter: bool = True  # trains and saves a LoRA-style adapter; False: every weight
    cuda_only: bool = False  # needs a CUDA GPU (bitsandbytes kernels)
    base_bits: int | None = None  # the frozen base is quantized to this many bits while training
    weight_decomposed: bool = False  # DoRA: a magnitude vector per module, W + BA rebuilt per step


FINETUNE_METHODS: dict[str, FinetuneMethod] = {
    m.name: m
    for m in (
        FinetuneMethod("lora", "low-rank adapters over the frozen base (PEFT LoRA)"),
        FinetuneMethod(
            "qlora",
            "LoRA over a 4-bit NF4 base (bitsandbytes; CUDA only)",
            cuda_only=True,
            base_bits=4,
        ),
        FinetuneMethod(
            "dora",
            "weight-decomposed LoRA: magnitude and direction trained apart",
            weight_decomposed=True,
        ),
        FinetuneMethod("full", "every weight trained, fp32 master weights", adapter=False),
    )
}


@dataclass(frozen=True)
class Objective:
    name: str
    summary: str
    openai_type: str  # the fine-tuning jobs API's `method.type` that asks for it
    pairs: bool = False  # trains on preference pairs (prompt, chosen, rejected), not on examples
    reference: bool = False  # needs the reference model's log-probabilities (DPO)
    default_beta: float | None = None  # --beta when not given; None: the objective has no beta


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective(
            "sft",
            "supervised fine-tuning: next-token loss on the assistant's answer tokens",
            openai_type="supervised",
        ),
        Objective(
            "dpo",
            "direct preference optimization: the chosen answer's log-ratio to the reference "
            "model above the rejected one's (Rafailov et al. 2023)",
            openai_type="dpo",
            pairs=True,
            reference=True,
            default_beta=0.1,
        ),
        Objective(
            "orpo",
            "odds-ratio preference optimization: SFT loss on the chosen answer plus "
            "--orpo-lambda times the odds-ratio loss; no reference model (Hong et al. 2024)",
            openai_type="orpo",
            pairs=True,
        ),
        Objective(
            "simpo",
            "simple preference optimization: length-normalized log-probabilities with a target "
            "margin --simpo-gamma; no reference model (Meng et al. 2024)",
            openai_type="simpo",
            pairs=True,
            default_beta=2.0,
        ),
    )
}

MethodName = Literal[tuple(FINETUNE_METHODS)]  # type: ignore[valid-type]
ObjectiveName = Literal[tuple(OBJECTIVES)]  # type: ignore[valid-type]


def get_finetune_method(name: str) -> FinetuneMethod:
    return FINETUNE_METHODS[name]


def get_objective(name: str) -> Objective:
    return OBJECTIVES[name]


def objectives_help() -> str:
    """`sft, dpo, orpo or simpo` for option help texts."""
    names = list(OBJECTIVES)
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def quantized_adapter_method() -> FinetuneMethod | None:
    """The method to suggest when the base does not fit in memory (QLoRA), if any."""
    return next((m for m in FINETUNE_METHODS.values() if m.adapter and m.base_bits), None)


def methods_help() -> str:
    """`lora, qlora (CUDA only), dora or full` for option help texts."""
    names = [f"{m.name} (CUDA only)" if m.cuda_only else m.name for m in FINETUNE_METHODS.values()]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
