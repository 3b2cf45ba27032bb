"""Parity of an ONNX build with its PyTorch source, before the build is kept.

For each prompt, PyTorch greedily decodes up to K tokens; both models then score that same
sequence in one teacher-forced pass, which gives the largest absolute logit difference over the
reply positions and the greedy next-token agreement (how often both pick the same token at the
same position). ONNX also decodes greedily on its own: an fp32 build must produce the very same
tokens. Each adapter is compared with PyTorch base + that adapter, and the base with no adapter
active with the plain base (the switchable graph must then equal the base).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.errors import RunError

BUILTIN_PROMPTS = [
    "What should I pack for a week in Lisbon in spring?",
    "Explain what a function is in Python.",
    "Suggest a three-day itinerary for Kyoto.",
    "How do I sort a list of numbers?",
    "What is the capital of France?",
    "Write a short note thanking a colleague.",
    "Which trains go from Paris to Amsterdam?",
    "Give me two tips for learning a language.",
    "How do I read a file line by line?",
    "What is a good budget for a weekend in Rome?",
]
FP32_MAX_LOGIT_DIFF = 1e-3


@dataclass
class Parity:
    prompts: int
    positions: int
    max_logit_diff: float
    agreement: float  # teacher-forced greedy next-token agreement
    greedy_match: float  # share of prompts whose free greedy output is identical

    def as_dict(self) -> dict[str, Any]:
        return {
            k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in asdict(self).items()
        }


def verification_prompts(data: Path | None, count: int) -> list[list[dict[str, str]]]:
    """Chat prompts: each example's turns up to its last user message, or built-in questions."""
    if data is None:
        return [[{"role": "user", "content": text}] for text in BUILTIN_PROMPTS[:count]]
    from slmforge.data.formats import read_examples

    prompts = []
    for example in read_examples(data):
        last_user = max(
            (i for i, m in enumerate(example.messages) if m["role"] == "user"), default=None
        )
        if last_user is not None:
            prompts.append(example.messages[: last_user + 1])
        if len(prompts) == count:
            break
    if not prompts:
        raise RunError(f"{data}: no example with a user message to verify with")
    return prompts


def _torch_greedy(model: Any, prompt: list[int], steps: int, stop_ids: set[int]) -> list[int]:
    import torch
    from transformers import DynamicCache

    cache, out_ids = DynamicCache(), []
    inputs = torch.tensor([prompt])
    for _ in range(steps):
        out = model(input_ids=inputs, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        token = int(torch.argmax(out.logits[0, -1]))
        out_ids.append(token)
        if token in stop_ids:
            break
        inputs = torch.tensor([[token]])
    return out_ids


def _onnx_greedy(engine: Any, prompt: list[int], steps: int, adapter: str | None) -> list[int]:
    """Greedy ids from the ONNX engine's own decode session (the path serving uses)."""
    import numpy as np

    out_ids: list[int] = []
    with engine.session(adapter, len(prompt) + steps) as forward:
        logits = forward(prompt)
        while True:
            out_ids.append(int(np.argmax(logits)))
            if out_ids[-1] in engine.stop_ids or len(out_ids) >= steps:
                return out_ids
            logits = forward([out_ids[-1]])


def compare(
    torch_model: Any,
    engine: Any,
    prompts: list[list[int]],
    steps: int,
    adapter: str | None,
) -> Parity:
    """Parity of `engine` (with `adapter` active) against `torch_model` on token prompts."""
    import numpy as np
    import torch

    worst, agree, positions, matches = 0.0, 0, 0, 0
    for prompt in prompts:
        with torch.inference_mode():
            reply = _torch_greedy(torch_model, prompt, steps, engine.stop_ids)
            sequence = prompt + reply
            ref = torch_model(input_ids=torch.tensor([sequence])).logits[0].float().numpy()
        ours = engine.logits(sequence, adapter)
        # Positions that predict each reply token (and the one after the last).
        span = slice(len(prompt) - 1, len(sequence))
        worst = max(worst, float(np.abs(ours[span] - ref[span]).max()))
        agree += int((ours[span].argmax(-1) == ref[span].argmax(-1)).sum())
        positions += len(sequence) - len(prompt) + 1
        matches += int(_onnx_greedy(engine, prompt, steps, adapter) == reply)
    return Parity(
        prompts=len(prompts),
        positions=positions,
        max_logit_diff=worst,
        agreement=agree / positions,
        greedy_match=matches / len(prompts),
    )


def check(parity: Parity, precision: str, min_agreement: float, label: str) -> None:
    """Raise RunError when a build misses its precision's bar."""
    figures = (
        f"max logit diff {parity.max_logit_diff:.3g}, agreement {parity.agreement:.1%}, "
        f"identical greedy output on {parity.greedy_match:.0%} of prompts"
    )
    if precision == "fp32" and (
        parity.max_logit_diff >= FP32_MAX_LOGIT_DIFF or parity.greedy_match < 1.0
    ):
        raise RunError(
            f"verification failed for {label}: fp32 must match PyTorch "
            f"(logit diff < {FP32_MAX_LOGIT_DIFF:g}, same greedy output); {figures}"
        )
    if parity.agreement < min_agreement:
        raise RunError(
            f"verification failed for {label}: agreement {parity.agreement:.1%} is below "
            f"--min-agreement {min_agreement:.1%} ({figures}); try a higher precision, "
            "--int4-algo k_quant or --int4-block-size 16"
        )


def verify_build(
    folder: Path,
    source: Path,
    adapters: dict[str, Path],
    merged: bool,
    prompts: list[list[dict[str, str]]],
    steps: int,
) -> dict[str, Parity]:
    """Parity per variant: "base" (no adapter active) and each switchable adapter by name.

    With `merged`, the one adapter is baked into the ONNX weights, so "base" is compared with
    PyTorch base + that adapter.
    """
    from slmforge.models.load import load_causal_lm
    from slmforge.runtime.onnx_engine import OnnxEngine
    from slmforge.runtime.torch_engine import _attach_adapters

    engine = OnnxEngine(folder, adapters={} if merged else None)
    token_prompts = [engine.prompt_ids(messages) for messages in prompts]
    base = load_causal_lm(source, dtype="float32")
    model = _attach_adapters(base, {k: str(v) for k, v in adapters.items()}).eval()
    results: dict[str, Parity] = {}
    with progress.task("Verifying against PyTorch", total=1 + len(engine.adapters())) as task:
        if merged:
            model.set_adapter(next(iter(adapters)))
            results["base"] = compare(model, engine, token_prompts, steps, None)
        else:
            context = model.disable_adapter() if adapters else nullcontext()
            with context:
                results["base"] = compare(model, engine, token_prompts, steps, None)
        task.advance(agreement=results["base"].agreement)
        for name in engine.adapters():
            model.set_adapter(name)
            results[name] = compare(model, engine, token_prompts, steps, name)
            task.advance(agreement=results[name].agreement)
    return results
