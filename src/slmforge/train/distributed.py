"""Data-parallel training on existing engines: torchrun launches, gloo/nccl process groups.

`slmforge finetune --nproc N` relaunches itself under `torch.distributed.run`; a user can also
run `torchrun --nproc-per-node N -m slmforge finetune ...` or `accelerate launch`, and a
multi-node job with torchrun's rendezvous options (see docs/finetune.md). Inside a worker,
`DistContext.from_env()` reads the standard RANK/WORLD_SIZE/LOCAL_RANK variables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from slmforge.errors import RunError


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistContext:
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            world=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )

    def init(self, device: str) -> None:
        """Join the process group (gloo on CPU, nccl on CUDA)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any_true(self, flag: bool) -> bool:
        return self.all_sum([1.0 if flag else 0.0])[0] > 0

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def wrap_ddp(model: Any, ctx: DistContext, device: str) -> Any:
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.local_rank] if device == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def under_launcher() -> bool:
    return "WORLD_SIZE" in os.environ


def launch(argv: list[str], nproc: int) -> int:
    """Run `slmforge <argv>` in `nproc` processes with torchrun on this machine."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "slmforge",
        *argv,
    ]
    try:
        return subprocess.run(cmd, check=False).returncode
    except OSError as exc:
        raise RunError(f"could not start torchrun: {exc}") from exc


def launch_finetune(cfg: Any) -> None:
    """Run `slmforge finetune` with the validated `FinetuneConfig` in `cfg.nproc` processes
    (the config travels as a YAML file); the CLI and workflows both start DDP runs here."""
    import tempfile
    from pathlib import Path

    import yaml

    with tempfile.TemporaryDirectory(prefix="slmforge-ddp-") as tmp:
        config_path = Path(tmp) / "finetune.yaml"
        config_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")), encoding="utf-8")
        code = launch(["finetune", "--config", str(config_path)], cfg.nproc)
    if code:
        err = RunError(f"distributed fine-tuning failed (workers exited with code {code})")
        err.exit_code = code if code in (2, 130) else 1
        raise err
