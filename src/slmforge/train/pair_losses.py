"""The preference losses, on sequence log-probabilities: DPO, ORPO and SimPO, one registry.

Each takes the policy's log-probabilities of the chosen and rejected answers (summed over the
answer tokens, with the token counts), and for DPO the reference model's, and returns a loss
per pair with the rewards its metrics report (as TRL reports them):

  dpo    -log σ(β[(πc - rc) - (πr - rr)]), π and r summed log-probabilities (Rafailov et al.
         2023, the sigmoid loss); rewards β(π - r); with --dpo-nll-weight α, plus α times the
         chosen answer's NLL (its mean per-token loss: RPO, Pang et al. 2024, TRL's rpo_alpha)
  orpo   NLL of the chosen answer (its mean per-token loss) - λ log σ(log odds(c) - log odds(r)),
         odds from the mean per-token log-probability p̄: log odds = p̄ - log(1 - e^p̄) (Hong
         et al. 2024); rewards λ p̄
  simpo  -log σ(β p̄c - β p̄r - γ), p̄ the mean per-token log-probability (Meng et al. 2024);
         rewards β p̄

`chosen_logp`/`rejected_logp` are the log-probabilities each loss scores: summed for DPO, the
per-token mean for ORPO and SimPO.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from slmforge.config.finetune import FinetuneConfig


@dataclass
class SequenceLogps:
    """Per pair: summed log-probabilities of the chosen and rejected answer tokens, and how
    many tokens each answer has."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            self.chosen / self.chosen_tokens.clamp(min=1),
            self.rejected / self.rejected_tokens.clamp(min=1),
        )


@dataclass
class PairLoss:
    """Per pair: the loss (with its graph) and, detached, the rewards and log-probabilities
    the metrics report."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    chosen_logp: torch.Tensor
    rejected_logp: torch.Tensor

    def hits(self) -> float:
        """Pairs whose chosen reward is above the rejected one; a tie counts half (no
        preference is a coin toss: DPO's rewards all tie at step 0)."""
        above = (self.chosen_rewards > self.rejected_rewards).sum()
        ties = (self.chosen_rewards == self.rejected_rewards).sum()
        return float(above) + 0.5 * float(ties)

    def margin(self) -> float:
        return float((self.chosen_rewards - self.rejected_rewards).sum())


def dpo_loss(
    policy: SequenceLogps, reference: SequenceLogps, beta: float, nll_weight: float = 0.0
) -> PairLoss:
    chosen_ratio = policy.chosen - reference.chosen
    rejected_ratio = policy.rejected - reference.rejected
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    if nll_weight:
        losses = losses - nll_weight * policy.means()[0]
    return PairLoss(
        losses,
        beta * chosen_ratio.detach(),
        beta * rejected_ratio.detach(),
        policy.chosen.detach(),
        policy.rejected.detach(),
    )


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x < 0, stable on both sides of -log 2 (Mächler 2012). x is held just
    below 0: a mean log-probability of 0 (certainty) has no finite odds."""
    x = x.clamp(max=-1e-6)
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(policy: SequenceLogps, lam: float) -> PairLoss:
    chosen, rejected = policy.means()
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    losses = -chosen - lam * F.logsigmoid(log_odds)
    return PairLoss(
        losses,
        lam * chosen.detach(),
        lam * rejected.detach(),
        chosen.detach(),
        rejected.detach(),
    )


def simpo_loss(policy: SequenceLogps, beta: float, gamma: float) -> PairLoss:
    chosen, rejected = policy.means()
    losses = -F.logsigmoid(beta * chosen - beta * rejected - gamma)
    return PairLoss(
        losses,
        beta * chosen.detach(),
        beta * rejected.detach(),
        chosen.detach(),
        rejected.detach(),
    )


PairLossFn = Callable[[SequenceLogps, "SequenceLogps | None", FinetuneConfig], PairLoss]


def _dpo(policy: SequenceLogps, reference: SequenceLogps | None, cfg: FinetuneConfig) -> PairLoss:
    if reference is None:
        raise ValueError("DPO needs the reference model's log-probabilities")
    return dpo_loss(policy, reference, cfg.effective_beta or 0.0, cfg.dpo_nll_weight)


PAIR_LOSSES: dict[str, PairLossFn] = {
    "dpo": _dpo,
    "orpo": lambda policy, _ref, cfg: orpo_loss(policy, cfg.orpo_lambda),
    "simpo": lambda policy, _ref, cfg: simpo_loss(
        policy, cfg.effective_beta or 0.0, cfg.simpo_gamma
    ),
}
