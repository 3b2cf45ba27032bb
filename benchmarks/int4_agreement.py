"""Quantization fidelity on real text: next-token agreement of the ONNX builds with PyTorch.

`slmforge optimize` verifies a build on the replies the model itself writes; a briefly
pretrained model writes short, predictable replies, where agreement is easy. This script
teacher-forces whole conversations of the sample data (the user turn and the reference
answer, rendered with the model's chat template) through PyTorch and through each ONNX build
of the `small` model (`OnnxEngine.logits`, one pass each), and reports at every position:
how often both pick the same next token (all positions, and the answer's positions only), the
mean and largest absolute logit difference, and the model's own accuracy on the text, so the
figures can be read against how sure the model is. Run:

    .venv/bin/python benchmarks/int4_agreement.py
    .venv/bin/python benchmarks/int4_agreement.py --precisions int4 --rows 50
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_models import CACHE, log, onnx_model, small_model


def conversations(tokenizer, rows: int) -> list[tuple[list[int], int]]:
    """(ids, index of the first answer token) for the first `rows` sample pairs."""
    from slmforge.data.sample import sample_pairs

    out = []
    for pair in list(sample_pairs())[:rows]:
        user = [{"role": "user", "content": pair["prompt"]}]
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": pair["response"]}], tokenize=False
        )
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        out.append((tokenizer(full, add_special_tokens=False)["input_ids"], start))
    return out


def torch_logits(model_dir, texts) -> list[np.ndarray]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([ids])).logits[0].numpy() for ids, _ in texts]


def compare(reference, ours, texts) -> dict[str, float]:
    agree = agree_answer = positions = answer_positions = correct = 0
    diffs, worst = [], 0.0
    for ref, got, (ids, start) in zip(reference, ours, texts, strict=True):
        ref, got = ref[:-1], got[:-1]  # position i predicts token i + 1
        same = ref.argmax(-1) == got.argmax(-1)
        agree += int(same.sum())
        agree_answer += int(same[start - 1 :].sum())
        positions += len(same)
        answer_positions += len(same) - (start - 1)
        correct += int((ref.argmax(-1) == np.asarray(ids[1:])).sum())
        delta = np.abs(ref - got)
        diffs.append(float(delta.mean()))
        worst = max(worst, float(delta.max()))
    return {
        "agreement": agree / positions,
        "answer_agreement": agree_answer / answer_positions,
        "mean_abs_diff": float(np.mean(diffs)),
        "max_abs_diff": worst,
        "torch_accuracy": correct / positions,
        "positions": positions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", default="fp32,int8,int4")
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    from slmforge.models.load import load_tokenizer
    from slmforge.runtime.onnx_engine import OnnxEngine

    model_dir = small_model()
    texts = conversations(load_tokenizer(model_dir), args.rows)
    started = time.perf_counter()
    reference = torch_logits(model_dir, texts)
    log(f"PyTorch logits for {len(texts)} conversations in {time.perf_counter() - started:.0f}s")
    print(f"model {model_dir.relative_to(CACHE.parent.parent)}, {len(texts)} sample conversations")
    print(
        f"{'build':<8}{'agree all':>11}{'agree answer':>14}{'mean |dlogit|':>15}"
        f"{'max |dlogit|':>14}{'positions':>11}"
    )
    for precision in args.precisions.split(","):
        engine = OnnxEngine(onnx_model(precision))
        result = compare(reference, [engine.logits(ids) for ids, _ in texts], texts)
        print(
            f"{precision:<8}{result['agreement']:>11.1%}{result['answer_agreement']:>14.1%}"
            f"{result['mean_abs_diff']:>15.4f}{result['max_abs_diff']:>14.3f}"
            f"{result['positions']:>11}"
        )
    print(f"PyTorch's own next-token accuracy on the text: {result['torch_accuracy']:.1%}")


if __name__ == "__main__":
    main()
