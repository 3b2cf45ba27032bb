"""Write a Hugging Face folder (llama, qwen2, phi3 or mistral, as `slmforge models tiny`
writes them) as one GGUF file for llama.cpp, offline, then check llama.cpp against PyTorch on a
prompt. The benchmarks use it to give llama.cpp the very weights slmforge serves.

The file comes from slmforge's own GGUF writer (`slmforge.optimize.gguf`, the library behind
the GGUF export): llama.cpp's tensor names and hyper-parameters, the q/k RoPE permutation, the
tokenizer and chat template; f32, f16, q8_0 and q4_0 from gguf-py's quantizers, q4_k_m from
llama.cpp's. Only the model file: no adapters, Modelfile or PyTorch verification (the check
below runs llama.cpp itself). Needs the `bench` extra.

    .venv/bin/python benchmarks/gguf_export.py MODEL_DIR --out model.gguf --type q4_0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_k_m")
PARITY_PROMPT = "The return value is a list of the names of the files in the directory"


def export(folder: Path, out: Path, kind: str = "f16") -> Path:
    """Write `folder` as the GGUF file `out` at `kind` (one of TYPES)."""
    from slmforge.optimize.gguf.run import write_model_file

    return write_model_file(folder, out, kind)


def parity(folder: Path, gguf_path: Path, prompt: str = PARITY_PROMPT, steps: int = 16) -> dict:
    """llama.cpp vs PyTorch on `prompt`: same token ids, max |logit difference| at the prompt's
    last position, and greedy next-token agreement over `steps` positions fed the same history
    (PyTorch's greedy continuation, end-of-text suppressed so it runs `steps` tokens)."""
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(prompt)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        greedy = model.generate(
            torch.tensor([ids]), max_new_tokens=steps, do_sample=False, min_new_tokens=steps
        )[0, len(ids) :].tolist()
        torch_logits = model(torch.tensor([ids + greedy])).logits[0].numpy()
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    llama_ids = llm.tokenize(prompt.encode(), add_bos=True, special=False)
    llm.eval(ids + greedy)
    llama_logits = np.asarray(llm.scores[: len(ids) + steps])
    positions = range(len(ids) - 1, len(ids) + steps - 1)
    agree = sum(int(np.argmax(llama_logits[p]) == np.argmax(torch_logits[p])) for p in positions)
    return {
        "same_token_ids": llama_ids == ids,
        "max_abs_logit_diff": float(
            np.abs(llama_logits[len(ids) - 1] - torch_logits[len(ids) - 1]).max()
        ),
        "greedy_agreement": agree / steps,
        "pytorch_text": tokenizer.decode([int(np.argmax(torch_logits[p])) for p in positions]),
        "llama_cpp_text": tokenizer.decode([int(np.argmax(llama_logits[p])) for p in positions]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="Hugging Face model folder")
    parser.add_argument("--out", type=Path, required=True, help="GGUF file to write")
    parser.add_argument("--type", choices=TYPES, default="f16")
    parser.add_argument("--no-check", action="store_true", help="skip the PyTorch comparison")
    args = parser.parse_args()
    export(args.model, args.out, args.type)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB, {args.type})")
    if not args.no_check:
        for key, value in parity(args.model, args.out).items():
            print(f"  {key}: {value!r}")


if __name__ == "__main__":
    main()
