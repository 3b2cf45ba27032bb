"""Parity of a GGUF export with its PyTorch source, before the export is kept.

One model in memory at a time, in two phases on the same Hugging Face model object:
1. PyTorch: the source (fp32) with every PEFT adapter attached decodes each prompt greedily per
   variant (the base, each adapter, or the merged adapter) and keeps the logits of the reply
   positions (teacher-forced).
2. GGUF: the adapters are detached, every weight is overwritten with the GGUF file's values
   (read back and dequantized: readback.py), and the same sequences are scored again; an
   adapter variant adds the adapter file's alpha/r * B @ A to the weights it targets, then
   takes it off again.
The figures (mean KL, top-1 agreement where PyTorch is confident, max logit difference) are
optimize/verify.py's `measure`, so GGUF and ONNX builds are judged the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.errors import RunError
from slmforge.optimize.gguf.families import family_of
from slmforge.optimize.gguf.readback import GgufTensors, adapter_deltas, load_into
from slmforge.optimize.verify import OnnxRun, Parity, agreement_too_low, measure


@dataclass(frozen=True)
class Variant:
    label: str  # "base" or the adapter's name
    peft_adapter: str | None  # active on the PyTorch side
    gguf_adapter: Path | None  # adapter file applied on the GGUF side


def prompt_ids(tokenizer: Any, prompts: list[list[dict[str, str]]]) -> list[list[int]]:
    """Each chat prompt rendered with the model's template, as the runtime would send it."""
    ids = []
    for messages in prompts:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def _reply_logits(model: Any, sequence: list[int], prompt_len: int) -> Any:
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([sequence])).logits[0]
    return logits[prompt_len - 1 : len(sequence) - 1].float().numpy().copy()


def _greedy(model: Any, prompt: list[int], steps: int, stop_ids: list[int]) -> list[int]:
    import torch

    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
            max_new_tokens=steps,
            do_sample=False,
            eos_token_id=stop_ids or None,
            pad_token_id=stop_ids[0] if stop_ids else 0,
        )
    return out[0].tolist()


def torch_phase(
    model: Any, variants: list[Variant], prompts: list[list[int]], steps: int, stop_ids: list[int]
) -> dict[str, tuple[list[OnnxRun], list[Any]]]:
    """Per variant: the PyTorch greedy runs and their reference logits."""
    from contextlib import nullcontext

    results = {}
    with progress.task("Scoring with PyTorch", total=len(variants)) as task:
        for variant in variants:
            if variant.peft_adapter is not None:
                model.set_adapter(variant.peft_adapter)
                context: Any = nullcontext()
            else:
                context = (
                    model.disable_adapter() if hasattr(model, "peft_config") else nullcontext()
                )
            runs, references = [], []
            with context:
                for prompt in prompts:
                    sequence = _greedy(model, prompt, steps, stop_ids)
                    runs.append(OnnxRun(len(prompt), sequence, None))
                    references.append(_reply_logits(model, sequence, len(prompt)))
            results[variant.label] = (runs, references)
            task.advance()
    return results


def gguf_phase(
    model: Any,
    gguf_path: Path,
    config: dict[str, Any],
    variants: list[Variant],
    torch_runs: dict[str, tuple[list[OnnxRun], list[Any]]],
) -> dict[str, Parity]:
    """Overwrite `model` (a plain Hugging Face model) with the GGUF weights and score the same
    sequences per variant."""
    import torch

    family = family_of(config)
    load_into(model, GgufTensors(gguf_path), family, config)
    params = dict(model.named_parameters())
    results = {}
    with progress.task("Scoring the GGUF weights", total=len(variants)) as task:
        for variant in variants:
            deltas = {}
            if variant.gguf_adapter is not None:
                deltas = adapter_deltas(variant.gguf_adapter, family, config, list(params))
            saved = {name: params[name].detach().clone() for name in deltas}
            with torch.no_grad():
                for name, delta in deltas.items():
                    params[name].add_(torch.from_numpy(delta))
            runs, references = torch_runs[variant.label]
            scored = [
                OnnxRun(
                    run.prompt_len, run.sequence, _reply_logits(model, run.sequence, run.prompt_len)
                )
                for run in runs
            ]
            with torch.no_grad():
                for name, original in saved.items():
                    params[name].copy_(original)
            results[variant.label] = measure(references, scored, None)
            task.advance(kl=results[variant.label].kl)
    return results


def verify_export(
    source: Path,
    gguf_path: Path,
    config: dict[str, Any],
    adapters: dict[str, tuple[Path, Path | None]],
    merged: str | None,
    prompts: list[list[dict[str, str]]],
    steps: int,
) -> dict[str, Parity]:
    """Parity per variant. `adapters`: name -> (PEFT folder, GGUF adapter file or None when
    merged). With `merged`, "base" is PyTorch base + that adapter against the merged file."""
    from slmforge.models.chat import stop_strings
    from slmforge.models.load import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(source)
    vocab = tokenizer.get_vocab()
    stop_ids = [vocab[s] for s in stop_strings(tokenizer) if s in vocab]
    variants = [Variant("base", merged, None)]
    variants += [Variant(n, n, f) for n, (_, f) in adapters.items() if f is not None]
    model = load_causal_lm(source, dtype="float32")
    if adapters:
        from peft import PeftModel

        items = iter(adapters.items())
        first, (first_path, _) = next(items)
        model = PeftModel.from_pretrained(model, str(first_path), adapter_name=first)
        for name, (path, _) in items:
            model.load_adapter(str(path), adapter_name=name)
    runs = torch_phase(model, variants, prompt_ids(tokenizer, prompts), steps, stop_ids)
    if adapters:
        model = model.unload()  # the plain base again: GGUF adapters are added by hand
    return gguf_phase(model, gguf_path, config, variants, runs)


def check(parity: Parity, max_kl: float, min_agreement: float, label: str) -> None:
    """Raise RunError when the export misses its precision's bars."""
    figures = (
        f"mean KL {parity.kl:.3g}, top-1 agreement {parity.confident_agreement:.1%} on "
        f"{parity.confident_positions} confident positions ({parity.agreement:.1%} on all), "
        f"max logit diff {parity.max_logit_diff:.3g}"
    )
    if parity.kl > max_kl or agreement_too_low(parity, min_agreement):
        raise RunError(
            f"GGUF verification failed for {label}: needs mean KL <= {max_kl:.3g} (--max-kl) "
            f"and confident agreement >= {min_agreement:.1%} (--min-agreement; one-sided "
            f"binomial test); {figures}; "
            "try a higher precision"
        )
