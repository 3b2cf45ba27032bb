"""The preference losses and their metrics against hand computations and TRL's own loss code,
and the one concatenated forward pass of a pair micro-batch against separate passes."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from slmforge.config.finetune import FinetuneConfig
from slmforge.train.collate import IGNORE, Encoded
from slmforge.train.kept_positions import last_layer_mlp
from slmforge.train.pair_losses import (
    PAIR_LOSSES,
    SequenceLogps,
    dpo_loss,
    orpo_loss,
    simpo_loss,
)
from slmforge.train.preference import PairObjective, PairRow, answer_logps, pair_logps

# Per pair: summed answer log-probabilities and answer token counts.
CHOSEN, REJECTED = [-12.0, -30.5, -4.2], [-15.0, -22.0, -4.2]
CHOSEN_TOKENS, REJECTED_TOKENS = [6, 10, 3], [5, 8, 3]
REF_CHOSEN, REF_REJECTED = [-13.0, -29.0, -5.0], [-14.0, -23.5, -4.0]


def _logps(chosen, rejected, chosen_tokens=None, rejected_tokens=None) -> SequenceLogps:
    ones = [1] * len(chosen)
    return SequenceLogps(
        torch.tensor(chosen),
        torch.tensor(rejected),
        torch.tensor(chosen_tokens or ones, dtype=torch.float32),
        torch.tensor(rejected_tokens or ones, dtype=torch.float32),
    )


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def _close(tensor: torch.Tensor, values: list[float]) -> bool:
    return torch.allclose(tensor, torch.tensor(values), atol=1e-5)


POLICY = _logps(CHOSEN, REJECTED, CHOSEN_TOKENS, REJECTED_TOKENS)


def test_dpo_is_the_sigmoid_loss_of_the_log_ratio_margin() -> None:
    beta = 0.1
    out = dpo_loss(POLICY, _logps(REF_CHOSEN, REF_REJECTED), beta)
    ratios = [
        (c - rc, r - rr)
        for c, rc, r, rr in zip(CHOSEN, REF_CHOSEN, REJECTED, REF_REJECTED, strict=True)
    ]
    assert _close(out.losses, [-_log_sigmoid(beta * (c - r)) for c, r in ratios])
    assert _close(out.chosen_rewards, [beta * c for c, _ in ratios])
    assert _close(out.rejected_rewards, [beta * r for _, r in ratios])
    assert _close(out.chosen_logp, CHOSEN) and _close(out.rejected_logp, REJECTED)


def test_dpo_with_an_nll_weight_adds_the_chosen_answers_mean_token_loss() -> None:
    reference = _logps(REF_CHOSEN, REF_REJECTED)
    plain = dpo_loss(POLICY, reference, 0.1)
    rpo = dpo_loss(POLICY, reference, 0.1, nll_weight=0.5)
    nll = [-c / n for c, n in zip(CHOSEN, CHOSEN_TOKENS, strict=True)]
    assert _close(
        rpo.losses, [p + 0.5 * x for p, x in zip(plain.losses.tolist(), nll, strict=True)]
    )
    assert torch.equal(rpo.chosen_rewards, plain.chosen_rewards)  # rewards stay DPO's
    cfg = FinetuneConfig(model="m", data="d.jsonl", out="o", objective="dpo", dpo_nll_weight=0.5)
    assert torch.equal(PAIR_LOSSES["dpo"](POLICY, reference, cfg).losses, rpo.losses)
    with pytest.raises(ValueError, match="--dpo-nll-weight does not apply"):
        FinetuneConfig(model="m", data="d.jsonl", out="o", objective="simpo", dpo_nll_weight=1)


def test_dpo_starts_at_log_2_with_tied_rewards_when_the_policy_is_the_reference() -> None:
    out = dpo_loss(POLICY, POLICY, 0.1)
    assert _close(out.losses, [math.log(2)] * 3)
    assert out.hits() == 1.5 and out.margin() == 0.0  # ties count half: a coin toss


def _odds(mean_logp: float) -> float:
    return mean_logp - math.log(1 - math.exp(mean_logp))


def test_orpo_is_chosen_nll_plus_lambda_times_the_odds_ratio_loss() -> None:
    lam = 0.25
    out = orpo_loss(POLICY, lam)
    expected = []
    for c, r, nc, nr in zip(CHOSEN, REJECTED, CHOSEN_TOKENS, REJECTED_TOKENS, strict=True):
        mc, mr = c / nc, r / nr
        expected.append(-mc - lam * _log_sigmoid(_odds(mc) - _odds(mr)))
    assert _close(out.losses, expected)
    means = [c / n for c, n in zip(CHOSEN, CHOSEN_TOKENS, strict=True)]
    assert _close(out.chosen_rewards, [lam * m for m in means])
    assert _close(out.chosen_logp, means)


def test_orpo_stays_finite_near_certainty() -> None:
    out = orpo_loss(_logps([-1e-9, -1e-3], [-50.0, -1e-9]), 0.1)
    assert torch.isfinite(out.losses).all()


def test_simpo_is_the_length_normalized_margin_loss() -> None:
    beta, gamma = 2.0, 0.5
    out = simpo_loss(POLICY, beta, gamma)
    expected = []
    for c, r, nc, nr in zip(CHOSEN, REJECTED, CHOSEN_TOKENS, REJECTED_TOKENS, strict=True):
        expected.append(-_log_sigmoid(beta * c / nc - beta * r / nr - gamma))
    assert _close(out.losses, expected)
    means = [r / n for r, n in zip(REJECTED, REJECTED_TOKENS, strict=True)]
    assert _close(out.rejected_rewards, [beta * m for m in means])


def test_the_registry_reads_each_objectives_options() -> None:
    base = {"model": "m", "data": "d.jsonl", "out": "o"}
    dpo = FinetuneConfig(**base, objective="dpo", beta=0.3)
    reference = _logps(REF_CHOSEN, REF_REJECTED)
    assert torch.equal(
        PAIR_LOSSES["dpo"](POLICY, reference, dpo).losses, dpo_loss(POLICY, reference, 0.3).losses
    )
    simpo = FinetuneConfig(**base, objective="simpo", simpo_gamma=1.0)  # default beta 2.0
    assert torch.equal(
        PAIR_LOSSES["simpo"](POLICY, None, simpo).losses, simpo_loss(POLICY, 2.0, 1.0).losses
    )
    orpo = FinetuneConfig(**base, objective="orpo", orpo_lambda=0.5)
    assert torch.equal(
        PAIR_LOSSES["orpo"](POLICY, None, orpo).losses, orpo_loss(POLICY, 0.5).losses
    )


def test_records_carry_the_names_other_stages_read() -> None:
    cfg = FinetuneConfig(model="m", data="d.jsonl", out="o", objective="dpo")
    objective = PairObjective(cfg)
    sums = dict(zip(objective.sum_keys, [2.0, 4, 3.5, 1.2, -40.0, -48.0], strict=True))
    assert objective.record(sums, False) == {
        "loss": 0.5,
        "reward_accuracy": 0.875,
        "reward_margin": 0.3,
        "chosen_logp": -10.0,
        "rejected_logp": -12.0,
    }
    assert set(objective.record(sums, True)) == {
        "eval_loss",
        "eval_reward_accuracy",
        "eval_reward_margin",
        "eval_chosen_logp",
        "eval_rejected_logp",
    }


# -- against TRL's own loss code (its trainers' loss methods, on a stand-in `self`) ------------
def test_orpo_and_simpo_match_trl() -> None:
    pytest.importorskip("trl")
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.cpo.cpo_trainer import CPOTrainer
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    chosen, rejected = POLICY.means()
    device = SimpleNamespace(device="cpu")
    lam = 0.25
    trl_ratio, trl_chosen, trl_rejected, _, _ = ORPOTrainer.odds_ratio_loss(
        SimpleNamespace(beta=lam, accelerator=device), chosen, rejected
    )
    ours = orpo_loss(POLICY, lam)
    # TRL's ORPO loss is NLL - mean(ratio terms): ours per pair is -mean logp(c) - ratio term
    assert torch.allclose(ours.losses, -chosen - trl_ratio, atol=1e-6)
    assert torch.allclose(ours.chosen_rewards, trl_chosen) and torch.allclose(
        ours.rejected_rewards, trl_rejected
    )
    cpo = SimpleNamespace(
        alpha=0.0,
        loss_type="simpo",
        simpo_gamma=0.5,
        beta=2.0,
        label_smoothing=0.0,
        accelerator=device,
    )
    trl_losses, trl_chosen, trl_rejected = CPOTrainer.cpo_loss(cpo, chosen, rejected)
    ours = simpo_loss(POLICY, 2.0, 0.5)
    assert torch.allclose(ours.losses, trl_losses, atol=1e-6)
    assert torch.allclose(ours.chosen_rewards, trl_chosen)
    assert torch.allclose(ours.rejected_rewards, trl_rejected)


# -- one concatenated forward pass -------------------------------------------------------------
def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


def _sequence(generator: torch.Generator, prompt: int, answer: int) -> Encoded:
    ids = torch.randint(1, 61, (prompt + answer,), generator=generator).tolist()
    return Encoded(ids, [IGNORE] * prompt + ids[prompt:])


def _by_hand(model: torch.nn.Module, encoded: Encoded) -> tuple[float, int]:
    """Summed log-probabilities of the labeled tokens, from one sequence alone."""
    logits = model(input_ids=torch.tensor([encoded.input_ids])).logits[0]
    logps = torch.log_softmax(logits.float(), -1)
    total, count = 0.0, 0
    for position, label in enumerate(encoded.labels[1:], start=1):
        if label != IGNORE:
            total += float(logps[position - 1, label])
            count += 1
    return total, count


@pytest.mark.parametrize("select_logits", [True, False])
def test_one_concatenated_pass_equals_separate_passes(select_logits: bool) -> None:
    model = _tiny_llama()
    generator = torch.Generator().manual_seed(1)
    rows = [
        PairRow(_sequence(generator, 5, 7), _sequence(generator, 5, 3)),
        PairRow(_sequence(generator, 9, 2), _sequence(generator, 9, 11)),
        PairRow(_sequence(generator, 3, 4), _sequence(generator, 3, 4)),
    ]
    plan = SimpleNamespace(
        device="cpu",
        autocast_dtype=None,
        select_logits=select_logits,
        share_prefix=False,  # tests/integration/test_shared_prefix.py covers pairs that share
        objective=PairObjective(
            FinetuneConfig(model="m", data="d.jsonl", out="o", objective="dpo")
        ),
        tokenizer=SimpleNamespace(pad_token_id=0),
        # with selected logits the last layer's MLP runs at the answer positions only;
        # `_by_hand` calls the model outside that, so it stays the whole forward
        last_mlp=last_layer_mlp(model, False, select_logits)[0],
    )
    assert (plan.last_mlp is not None) == select_logits
    with torch.no_grad():
        together = pair_logps(plan, model, rows)
        for index, row in enumerate(rows):
            for side, total, tokens in (
                (row.chosen, together.chosen, together.chosen_tokens),
                (row.rejected, together.rejected, together.rejected_tokens),
            ):
                alone, alone_tokens = answer_logps(plan, model, [side])
                expected, count = _by_hand(model, side)
                assert abs(float(total[index]) - float(alone[0])) < 1e-4
                assert abs(float(total[index]) - expected) < 1e-4
                assert int(tokens[index]) == int(alone_tokens[0]) == count


def test_the_memory_estimate_counts_both_answers_of_a_pair() -> None:
    from slmforge.train.distributed import DistContext
    from slmforge.train.sft import run_shape

    cfg = FinetuneConfig(model="m", data="d.jsonl", out="o", objective="dpo", batch_size=4)
    rows = [
        PairRow(
            Encoded([1] * 30, [IGNORE] * 10 + [1] * 20), Encoded([1] * 45, [IGNORE] * 10 + [1] * 35)
        )
    ]
    run = run_shape(cfg, DistContext(), PairObjective(cfg), "fp32", "cpu", rows, False)
    assert (run.batch, run.seq, run.trained) == (8, 45, 35)
