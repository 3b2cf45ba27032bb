"""Parity of an ONNX build with its PyTorch source, before the build is kept.

Two phases, so the ONNX and PyTorch copies of the model are never in memory together:
1. ONNX: for each prompt and each variant (the base with no adapter, each switchable adapter),
   decode greedily with the engine's own session (the serving path) and keep the logits of the
   reply positions. Then the engine is dropped.
2. PyTorch: load the source in its checkpoint dtype and score every prompt + ONNX reply in one
   batched, teacher-forced pass, computing in fp32 one layer at a time (each layer's weights
   are cast as it runs, so a bf16 checkpoint costs 2 bytes a parameter plus one layer, not 4).

Measures per variant, over the reply positions:
- `kl`: mean KL(source || build) of the next-token distributions; this is what the precision's
  bar judges, because it holds for any model: near-ties in a random or weakly trained model
  flip argmaxes without meaning anything.
- `confident_agreement`: top-1 agreement only where the source's top-1 margin (logit of the
  best token minus the second) exceeds `MARGIN` and, for int4/int8, where the source with its
  weights rounded as the build rounds them keeps its top token; judged against
  --min-agreement.
- `expected_kl` (int4/int8): the KL of that rounded source; twice it widens the default KL bar.
- `agreement` (all positions), `max_logit_diff`, and `greedy_match` (the share of prompts whose
  whole ONNX greedy reply is what PyTorch's greedy decoding gives: PyTorch's argmax equals the
  ONNX token at every reply position) are reported.
Each adapter is compared with PyTorch base + that adapter, and the base with no adapter active
with the plain base (the switchable graph must then equal the base).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
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
MARGIN = 1.0  # logits: a top-1 lead this large is not flipped by quantization noise
EXPECTED_KL_FACTOR = 2.0  # a build may move the model twice as far as exact rounding would


@dataclass
class Parity:
    prompts: int
    positions: int
    kl: float  # mean KL(source || build) over reply positions
    max_kl: float
    confident_positions: int  # positions where the source's top-1 margin exceeds MARGIN
    confident_agreement: float
    agreement: float  # teacher-forced top-1 agreement over every reply position
    max_logit_diff: float
    greedy_match: float  # share of prompts whose free greedy output is identical
    # mean KL(source || source with its weights rounded as the build rounds them): the error
    # an exact int4/int8 build of this model shows; None for float builds
    expected_kl: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in asdict(self).items()
        }


@dataclass(frozen=True)
class Rounding:
    """How an int4/int8 build rounds weights: every Linear but the LoRA ones (kept float so
    they can be switched), and a tied embedding, which reads the LM head's packed weights."""

    bits: int
    block: int
    tied: bool

    def applies(self, name: str, module: Any) -> bool:
        import torch

        if "lora_" in name:
            return False
        return isinstance(module, torch.nn.Linear) or (
            self.tied and isinstance(module, torch.nn.Embedding)
        )


@dataclass
class OnnxRun:
    """What the ONNX build did for one prompt: the sequence it decoded and its logits."""

    prompt_len: int
    sequence: list[int]
    logits: Any  # [reply positions, vocab] float32: the positions predicting each reply token


@dataclass
class Variant:
    label: str
    adapter: str | None  # the adapter active on the PyTorch side (None: the base)
    runs: list[OnnxRun] = field(default_factory=list)


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


def _onnx_run(engine: Any, prompt: list[int], steps: int, adapter: str | None) -> OnnxRun:
    """Greedy decoding with the engine's own session, keeping each step's logits."""
    import numpy as np

    reply: list[int] = []
    kept = []
    with engine.session(adapter, len(prompt) + steps) as forward:
        logits = forward(prompt)
        while True:
            # a copy: the engine reuses its bound output buffer on the next step
            kept.append(np.array(logits, dtype=np.float32).reshape(-1))
            reply.append(int(np.argmax(kept[-1])))
            if reply[-1] in engine.stop_ids or len(reply) >= steps:
                break
            logits = forward([reply[-1]])
    return OnnxRun(len(prompt), prompt + reply, np.stack(kept))


def onnx_phase(
    folder: Path, adapters: dict[str, Path], merged: bool, prompts: list[Any], steps: int
) -> list[Variant]:
    """Every variant's greedy runs on the ONNX build (the engine is freed on return)."""
    from slmforge.runtime.onnx_engine import OnnxEngine

    engine = OnnxEngine(folder, adapters={} if merged else None)
    token_prompts = [engine.prompt_ids(messages) for messages in prompts]
    base_adapter = next(iter(adapters)) if merged else None
    variants = [Variant("base", base_adapter)]
    variants += [Variant(name, name) for name in engine.adapters()]
    with progress.task("Decoding with the ONNX build", total=len(variants)) as task:
        for variant in variants:
            onnx_adapter = None if variant.label == "base" else variant.adapter
            variant.runs = [_onnx_run(engine, p, steps, onnx_adapter) for p in token_prompts]
            task.advance()
    return variants


BIG_WEIGHT = 16 * 1024 * 1024  # elements: an LM head or embedding is computed in row chunks


@contextmanager
def fp32_compute(model: Any, rounding: Rounding | None = None) -> Iterator[None]:
    """Run `model` in fp32 while its weights stay in their own dtype.

    Each leaf module with half-precision parameters gets fp32 copies just before it runs and
    its own parameters back right after, so at most one layer's weights exist twice; a big
    LM head or embedding is computed a few thousand rows at a time instead (on a 150k
    vocabulary its fp32 copy would outweigh a layer). The values are the same as loading the
    checkpoint in fp32 (a bf16 -> fp32 cast is exact). With `rounding`, the weights the build
    quantizes are also rounded the way it rounds them (`fake_quantize`): what an exact
    int4/int8 build of this model would compute.
    """
    import torch

    chosen = {id(m) for n, m in model.named_modules() if rounding and rounding.applies(n, m)}

    def before(module: Any, _args: Any) -> None:
        saved = dict(module._parameters)
        module._slmforge_saved = saved
        for name, param in saved.items():
            if param is None:
                continue
            if name == "weight" and id(module) in chosen:
                copy = param.to(torch.float32, copy=True)
                module._parameters[name] = fake_quantize(copy, rounding)  # type: ignore[arg-type]
            elif param.dtype != torch.float32:
                module._parameters[name] = param.float()

    def after(module: Any, _args: Any, _output: Any) -> None:
        module._parameters.update(module.__dict__.pop("_slmforge_saved"))

    handles, chunked = [], []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        round_it = rounding if id(module) in chosen else None
        big = isinstance(weight, torch.Tensor) and weight.numel() > BIG_WEIGHT
        if big and _chunk_forward(module, round_it):
            chunked.append(module)
            continue
        own = [p for p in module.parameters(recurse=False) if p.dtype != torch.float32]
        if own or round_it is not None:
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in chunked:
            del module.forward  # back to the class's own forward


def _chunk_forward(module: Any, rounding: Rounding | None, rows: int = 8192) -> bool:
    """Give a Linear or Embedding a forward that casts (and rounds) its weight by row chunks;
    False for other module types, which keep the whole-weight cast."""
    import torch
    import torch.nn.functional as F

    def weight_rows(start: int, stop: int) -> Any:
        chunk = module.weight[start:stop].to(torch.float32, copy=True)
        return fake_quantize(chunk, rounding) if rounding is not None else chunk

    if type(module) is torch.nn.Linear:

        def linear(x: Any) -> Any:
            outputs = []
            for start in range(0, module.out_features, rows):
                stop = min(start + rows, module.out_features)
                bias = None if module.bias is None else module.bias[start:stop].float()
                outputs.append(F.linear(x.float(), weight_rows(start, stop), bias))
            return torch.cat(outputs, dim=-1)

        module.forward = linear
        return True
    if type(module) is torch.nn.Embedding:

        def embedding(ids: Any) -> Any:
            # rounding runs along each row, so rounding the looked-up rows is the same as
            # rounding the table and looking them up
            picked = module.weight[ids.reshape(-1)].to(torch.float32, copy=True)
            if rounding is not None:
                fake_quantize(picked, rounding)
            return picked.reshape(*ids.shape, -1)

        module.forward = embedding
        return True
    return False


def fake_quantize(weight: Any, rounding: Rounding, rows_at_once: int = 4096) -> Any:
    """`weight` [out, in] rounded blockwise along `in`, symmetric, as ONNX Runtime's MatMulNBits
    quantizer does (the block's largest-magnitude value maps to -2^(bits-1)), then scaled back;
    in place, a few thousand rows at a time to bound the temporaries."""
    import torch

    levels = 2 ** (rounding.bits - 1)
    out_features, in_features = weight.shape
    pad = (-in_features) % rounding.block
    for start in range(0, out_features, rows_at_once):
        rows = weight[start : start + rows_at_once]
        blocks = torch.nn.functional.pad(rows, (0, pad)).reshape(len(rows), -1, rounding.block)
        peak = torch.gather(blocks, -1, blocks.abs().argmax(-1, keepdim=True))
        scale = torch.where(peak == 0, torch.ones_like(peak), peak / -levels)
        blocks = torch.clamp(torch.round(blocks / scale), -levels, levels - 1) * scale
        rows.copy_(blocks.reshape(len(rows), -1)[:, :in_features])
    return weight


def _reference_logits(model: Any, runs: list[OnnxRun], rounding: Rounding | None) -> list[Any]:
    """PyTorch logits at each run's reply positions, all runs in one left-padded batch.

    Left padding ends every row at the same column, so the head runs only on the last positions
    (`logits_to_keep`): on a 150k vocabulary the logits of whole prompts would cost more memory
    than a layer. Positions are passed explicitly so padding does not shift them.
    """
    import torch

    width = max(len(run.sequence) for run in runs)
    keep = max(len(run.sequence) - run.prompt_len + 1 for run in runs)
    ids = torch.zeros((len(runs), width), dtype=torch.long)
    mask = torch.zeros((len(runs), width), dtype=torch.long)
    for row, run in enumerate(runs):
        ids[row, width - len(run.sequence) :] = torch.tensor(run.sequence)
        mask[row, width - len(run.sequence) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode(), fp32_compute(model, rounding):
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
        ).logits
    out = []
    for row, run in enumerate(runs):
        replies = len(run.sequence) - run.prompt_len  # positions predicting each reply token
        # the kept block ends at the last column, which predicts past the sequence
        out.append(logits[row, keep - 1 - replies : keep - 1].float().numpy().copy())
    return out


def mean_kl(references: list[Any], others: list[Any]) -> Any:
    """KL(reference || other) at every position, concatenated over the runs."""
    import numpy as np

    kls = []
    for ref, other in zip(references, others, strict=True):
        log_p = _log_softmax(ref)
        log_q = _log_softmax(other[:, : ref.shape[-1]])
        kls.append((np.exp(log_p) * (log_p - log_q)).sum(-1))
    return np.concatenate(kls)


def measure(references: list[Any], runs: list[OnnxRun], rounded: list[Any] | None) -> Parity:
    """The parity figures of ONNX runs against PyTorch logits at the same positions."""
    import numpy as np

    kl = mean_kl(references, [run.logits for run in runs])
    diffs, agree, confident, confident_agree, matches = 0.0, 0, 0, 0, 0
    for row, (ref, run) in enumerate(zip(references, runs, strict=True)):
        ours = run.logits[:, : ref.shape[-1]]
        diffs = max(diffs, float(np.abs(ours - ref).max()))
        same = ours.argmax(-1) == ref.argmax(-1)
        top2 = np.sort(ref, axis=-1)[:, -2:]
        sure = (top2[:, 1] - top2[:, 0]) > MARGIN
        if rounded is not None:  # where exact rounding itself flips the top token, no build can
            sure &= rounded[row].argmax(-1) == ref.argmax(-1)
        agree += int(same.sum())
        confident += int(sure.sum())
        confident_agree += int((same & sure).sum())
        matches += int(same.all())
    return Parity(
        prompts=len(runs),
        positions=len(kl),
        kl=float(kl.mean()),
        max_kl=float(kl.max()),
        confident_positions=confident,
        confident_agreement=confident_agree / confident if confident else 1.0,
        agreement=agree / len(kl),
        max_logit_diff=diffs,
        greedy_match=matches / len(runs),
        expected_kl=None if rounded is None else float(mean_kl(references, rounded).mean()),
    )


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def torch_phase(
    source: Path, adapters: dict[str, Path], variants: list[Variant], rounding: Rounding | None
) -> dict[str, Parity]:
    """Parity per variant against the source model (in its checkpoint dtype) + adapters."""
    from slmforge.models.load import load_causal_lm
    from slmforge.runtime.torch_engine import _attach_adapters

    base = load_causal_lm(source, dtype="auto")
    model = _attach_adapters(base, {k: str(v) for k, v in adapters.items()}).eval()
    if rounding is not None:
        rounding = Rounding(rounding.bits, rounding.block, base.config.tie_word_embeddings)
    results: dict[str, Parity] = {}
    with progress.task("Scoring with PyTorch", total=len(variants)) as task:
        for variant in variants:
            if variant.adapter is not None:
                model.set_adapter(variant.adapter)
                context: Any = nullcontext()
            else:
                context = model.disable_adapter() if adapters else nullcontext()
            with context:
                references = _reference_logits(model, variant.runs, None)
                rounded = _reference_logits(model, variant.runs, rounding) if rounding else None
            results[variant.label] = measure(references, variant.runs, rounded)
            task.advance(kl=results[variant.label].kl)
    return results


def allowed_kl(parity: Parity, max_kl: float, widen: bool = True) -> float:
    """The KL bar: `max_kl`, or, when `widen` (the default bar, not one the user set), more for
    a model whose own rounded weights move it further (random and deep models amplify
    rounding: a random Phi-3-mini shape shows ~0.4 at int4)."""
    if parity.expected_kl is None or not widen:
        return max_kl
    return max(max_kl, EXPECTED_KL_FACTOR * parity.expected_kl)


AGREEMENT_ALPHA = 0.05  # the chance below which too few agreements fail a build


def agreement_too_low(parity: Parity, min_agreement: float) -> bool:
    """Whether the confident positions show top-1 agreement below `min_agreement`: a
    one-sided binomial test, failing only when a build whose true agreement were
    `min_agreement` would show this few agreements with under 5% chance. Why: a random or
    barely trained model has one or two confident positions, and one flipped argmax among them
    is no evidence (measured: the 3.8B random shape with a 3-step adapter failed on 0 of 1
    with a KL at its rounding's own)."""
    n = parity.confident_positions
    if n == 0 or parity.confident_agreement >= min_agreement:
        return False
    agreed = round(parity.confident_agreement * n)
    p = min_agreement
    tail = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(agreed + 1))
    return tail < AGREEMENT_ALPHA


def check(
    parity: Parity,
    precision: str,
    max_kl: float,
    min_agreement: float,
    label: str,
    widen: bool = True,
) -> None:
    """Raise RunError when a build misses its precision's bars (`widen`: see `allowed_kl`)."""
    figures = (
        f"mean KL {parity.kl:.3g}, top-1 agreement {parity.confident_agreement:.1%} on "
        f"{parity.confident_positions} confident positions ({parity.agreement:.1%} on all), "
        f"max logit diff {parity.max_logit_diff:.3g}"
    )
    if parity.expected_kl is not None:
        figures += f", KL of PyTorch with the same rounding {parity.expected_kl:.3g}"
    if precision == "fp32" and parity.max_logit_diff >= FP32_MAX_LOGIT_DIFF:
        raise RunError(
            f"verification failed for {label}: fp32 must match PyTorch "
            f"(logit diff < {FP32_MAX_LOGIT_DIFF:g}); {figures}"
        )
    bar = allowed_kl(parity, max_kl, widen)
    if parity.kl > bar or agreement_too_low(parity, min_agreement):
        raise RunError(
            f"verification failed for {label}: needs mean KL <= {bar:.3g} (--max-kl, or "
            f"{EXPECTED_KL_FACTOR:g}x the rounding's own) and confident agreement >= "
            f"{min_agreement:.1%} (--min-agreement; one-sided binomial test at "
            f"{AGREEMENT_ALPHA:g}); {figures}; try a higher precision, "
            "--int4-algo gptq/awq with --calibration-data, --int4-algo k_quant or "
            "--int4-block-size 16"
        )


def verify_build(
    folder: Path,
    source: Path,
    adapters: dict[str, Path],
    merged: bool,
    prompts: list[list[dict[str, str]]],
    steps: int,
    rounding: Rounding | None = None,
) -> dict[str, Parity]:
    """Parity per variant: "base" (no adapter active) and each switchable adapter by name.

    With `merged`, the one adapter is baked into the ONNX weights, so "base" is compared with
    PyTorch base + that adapter. The ONNX phase runs in a child process: ONNX Runtime keeps
    much of what it allocated after a session is dropped, and PyTorch loads next.
    """
    from slmforge.optimize.verify_child import onnx_phase_in_child

    variants = onnx_phase_in_child(folder, adapters, merged, prompts, steps)
    return torch_phase(source, adapters, variants, rounding)
