"""The fine-tuning and merge entry points that `slmforge finetune`/`merge` and a workflow's
`finetune`/`merge` stages both call, so the two doors cannot drift apart: the CLI parses and
prints, a stage only calls."""

from __future__ import annotations

from pathlib import Path

from slmforge.config.finetune import FinetuneConfig, MergeConfig


def run_finetune(cfg: FinetuneConfig) -> Path | None:
    """Fine-tune as `cfg` says. With `nproc` > 1 this process starts the workers (torchrun)
    and waits for them, unless it is already one of them: then it trains as its rank. Returns
    the output folder to the process that should report it (the launcher or rank 0), else
    None."""
    from slmforge.train.distributed import DistContext, launch_finetune, under_launcher

    if cfg.nproc > 1 and not under_launcher():
        launch_finetune(cfg)
        return cfg.out
    from slmforge.train.sft import finetune

    out = finetune(cfg)
    return out if DistContext.from_env().is_main else None


def run_merge(cfg: MergeConfig) -> Path:
    """Merge `cfg.adapter` into its base model and write the full model to `cfg.out`."""
    from slmforge.train.merge import merge_adapter

    return merge_adapter(
        cfg.adapter,
        cfg.out,
        base=cfg.base,
        dtype=cfg.dtype,
        force=cfg.force,
        allow_pickle=cfg.allow_pickle,
        trust_remote_code=cfg.trust_remote_code,
    )
