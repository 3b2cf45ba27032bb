"""Token choice for local engines: greedy or temperature/top-k/top-p sampling, log-probabilities,
and structured outputs (a grammar constraint, runtime/grammar.py), in one place for PyTorch and
ONNX.

Engines hand over the last position's logits as a numpy vector; the `Sampler` picks the next id
with a per-request random generator (a seed reproduces a reply whatever else runs), reports the
chosen token's log-probability and the most likely alternatives (from the model's own
distribution, before temperature, as the OpenAI API reports them), and, under a constraint,
draws only among the tokens the grammar allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slmforge.runtime.engine import GenParams


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (id, logprob), best first


@dataclass
class Sampled:
    token_id: int
    logprob: TokenLogprob | None = None
    ends: bool = False  # the reply is complete after this token (the grammar's value closed)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - np.max(logits)
    return shifted - np.log(np.sum(np.exp(shifted)))


def token_logprob(logprobs: np.ndarray, token_id: int, top: int) -> TokenLogprob:
    best: list[tuple[int, float]] = []
    if top:
        order = np.argpartition(-logprobs, min(top, logprobs.size - 1))[:top]
        order = order[np.argsort(-logprobs[order], kind="stable")]
        best = [(int(i), float(logprobs[i])) for i in order]
    return TokenLogprob(token_id, float(logprobs[token_id]), best)


class Sampler:
    def __init__(self, params: GenParams, constraint: Any = None) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.constraint = constraint

    def pick(self, logits: np.ndarray) -> Sampled:
        logits = np.asarray(logits, dtype=np.float32).reshape(-1)
        token_id = self._choose(logits)
        logprob = None
        if self.params.logprobs:
            logprob = token_logprob(log_softmax(logits), token_id, self.params.top_logprobs)
        ends = False
        if self.constraint is not None:
            self.constraint.advance(token_id)
            ends = self.constraint.complete
        return Sampled(token_id, logprob, ends)

    def _choose(self, logits: np.ndarray) -> int:
        if self.constraint is None:
            return self._draw(logits)
        allowed = self.constraint.allowed_mask(logits.size)
        if not allowed.any():
            raise RuntimeError("structured output: no token continues the grammar")
        return self._draw(np.where(allowed, logits, -np.inf))

    def _draw(self, logits: np.ndarray) -> int:
        params = self.params
        if params.temperature == 0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / params.temperature
        if params.top_k and params.top_k < scaled.size:
            kth = np.partition(scaled, -params.top_k)[-params.top_k]
            scaled = np.where(scaled < kth, -np.inf, scaled)
        probs = np.exp(scaled - np.max(scaled))
        probs /= probs.sum()
        if params.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            sorted_probs = probs[order]
            # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
            drop = np.cumsum(sorted_probs) - sorted_probs >= params.top_p
            sorted_probs[drop] = 0.0
            probs = np.zeros_like(probs)
            probs[order] = sorted_probs
            probs /= probs.sum()
        return int(self.rng.choice(probs.size, p=probs))


def sampled_tokens(
    forward: Callable[[list[int]], np.ndarray], prompt_ids: list[int], sampler: Sampler
) -> Iterator[Sampled]:
    """The decode loop of local engines: `forward(new_ids)` returns the last position's logits
    after feeding `new_ids` (the prompt first, then each chosen token). Runs until the consumer
    stops asking, so no forward pass is wasted after the last token."""
    logits = forward(prompt_ids)
    while True:
        sampled = sampler.pick(logits)
        yield sampled
        if sampled.ends:
            return
        logits = forward([sampled.token_id])
