"""Build small models of real architectures, with a locally trained tokenizer, fully offline.

`build("llama", out)` writes a normal Hugging Face model folder (config.json, model.safetensors,
generation_config.json, tokenizer.json, tokenizer_config.json with the chat template) plus
`slmforge.json`. The weights are briefly pretrained on standard-library docstrings and our sample
chats (see `corpus.py`), so fine-tuning them lowers loss the way it does on a real model. Nothing
downstream knows a folder came from here: tests and the demo use it exactly like a hub download.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.artifacts import artifact, check_output
from slmforge.models.chat import ChatFormat, format_for_arch

ARCHES = ("llama", "qwen2", "phi3", "mistral")


@dataclass(frozen=True)
class SizeSpec:
    vocab: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    pretrain_steps: int
    lr: float
    batch: int = 16
    seq_len: int = 128
    corpus_chars: int = 1_500_000
    # 1 in this many docstrings (and their chats) held out of training and of the tokenizer,
    # and scored after pretraining (`heldout_metrics`); 0: train on everything
    heldout_every: int = 0


SIZES = {
    # ~0.9M parameters; 600 steps (~70 s on 2 cores) take the loss from 7.7 to ~3.7 (300 steps
    # only reach ~4.8, and LoRA on that base then barely learns: 100 steps lowered the travel
    # loss 17% against 41% on the 600-step base). lr swept on 300 steps: 2e-3 was best.
    "tiny": SizeSpec(
        vocab=2048,
        layers=2,
        hidden=128,
        heads=4,
        kv_heads=2,
        intermediate=344,
        pretrain_steps=600,
        lr=2e-3,
    ),
    # ~4.2M parameters: the quantization benchmark's reference model (benchmarks/
    # quant_quality.py), trained until quantization quality means something: 1 in 20
    # docstrings held out. Measured on the shared 2-core VM (one thread): held-out next-token
    # accuracy 23.8% at 400 steps, 26.7% at 500, 29.5% at 800 (690 s of pretraining). A
    # vocabulary of 4096 (5.2M parameters) reached only 23.9% in 500 steps: longer tokens.
    "bench": SizeSpec(
        vocab=2048,
        layers=4,
        hidden=256,
        heads=4,
        kv_heads=2,
        intermediate=768,
        pretrain_steps=800,
        lr=2e-3,
        heldout_every=20,
    ),
    # ~95M parameters for benchmarks; each step takes seconds on a laptop CPU, so only a few.
    "small": SizeSpec(
        vocab=8192,
        layers=12,
        hidden=768,
        heads=12,
        kv_heads=4,
        intermediate=2304,
        pretrain_steps=12,
        lr=6e-4,
    ),
}
_WARMUP_FRACTION = 0.05
_HELDOUT_WINDOWS = 256  # at most this many seq_len windows of held-out text are scored
_MAX_POSITIONS = 2048


def train_tokenizer(docs: list[str], fmt: ChatFormat, vocab: int) -> Any:
    """A byte-level BPE trained on `docs`, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        special_tokens=fmt.special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    post: list[Any] = [processors.ByteLevel(trim_offsets=False)]
    if fmt.bos:  # like the real Llama 3 / Mistral tokenizers: plain text starts with bos
        bos_id = tok.token_to_id(fmt.bos)
        post.append(
            processors.TemplateProcessing(
                single=f"{fmt.bos} $A",
                pair=f"{fmt.bos} $A {fmt.bos} $B",
                special_tokens=[(fmt.bos, bos_id)],
            )
        )
    tok.post_processor = processors.Sequence(post)
    unk = "<unk>" if "<unk>" in fmt.special_tokens else None
    extra = [t for t in fmt.special_tokens if t not in (fmt.bos, fmt.eos, unk)]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=fmt.bos,
        eos_token=fmt.eos,
        pad_token=fmt.eos,
        unk_token=unk,
        extra_special_tokens=extra,
        chat_template=fmt.template,
        model_max_length=_MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """Save with the chat template inside tokenizer_config.json, as hub models have it."""
    tokenizer.save_pretrained(folder, save_jinja_files=False)
    # transformers 5 names its own backend class; older transformers and other runtimes (ONNX
    # Runtime GenAI's tokenizer) know the class real hub models name.
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def model_config(arch: str, spec: SizeSpec, tokenizer: Any) -> Any:
    """The real architecture's config class, sized by `spec`, with our token ids."""
    from transformers import LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=_MAX_POSITIONS,
        tie_word_embeddings=False,  # keeps lm_head a separate module: the usual LoRA/ONNX path
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False)
    if arch == "phi3":
        # Equal original/max positions: plain RoPE, no LongRoPE scaling.
        return Phi3Config(**common, original_max_position_embeddings=_MAX_POSITIONS)
    return MistralConfig(**common, sliding_window=None)


def _token_stream(tokenizer: Any, docs: list[str]) -> Any:
    """All documents as one id tensor, each document closed by eos (bos-led where the format
    has a bos), the way pretraining data is packed."""
    import torch

    encoded = tokenizer(docs, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    flat = [i for ids in encoded for i in [*ids, eos]]
    return torch.tensor(flat, dtype=torch.long)


def pretrain(model: Any, stream: Any, spec: SizeSpec, steps: int, seed: int) -> dict[str, float]:
    """AdamW with warmup and cosine decay on random windows of `stream`; returns loss metrics."""
    import torch

    if steps == 0:
        return {}
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, int(steps * _WARMUP_FRACTION))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses: list[float] = []
    model.train()
    started = time.monotonic()
    with progress.task("Pretraining", total=steps) as task:
        for _ in range(steps):
            starts = torch.randint(0, len(stream) - spec.seq_len - 1, (spec.batch,), generator=gen)
            batch = torch.stack([stream[s : s + spec.seq_len] for s in starts.tolist()])
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            task.advance(loss=losses[-1])
    model.eval()
    tail = losses[-min(10, len(losses)) :]
    return {
        "pretrain_loss_start": round(losses[0], 4),
        "pretrain_loss_end": round(sum(tail) / len(tail), 4),
        "pretrain_seconds": round(time.monotonic() - started, 1),
    }


def heldout_metrics(model: Any, stream: Any, seq_len: int) -> dict[str, float]:
    """Next-token accuracy and loss on consecutive `seq_len` windows of a held-out stream."""
    import torch

    model.eval()
    correct = total = 0
    loss = 0.0
    starts = range(0, len(stream) - 1, seq_len)[:_HELDOUT_WINDOWS]
    with torch.inference_mode():
        for start in starts:
            window = stream[start : start + seq_len + 1]
            logits = model(input_ids=window[None, :-1]).logits[0]
            targets = window[1:]
            correct += int((logits.argmax(-1) == targets).sum())
            total += len(targets)
            loss += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
    return {
        "heldout_accuracy": round(correct / total, 4),
        "heldout_loss": round(loss / total, 4),
        "heldout_tokens": total,
    }


def generation_config(tokenizer: Any, fmt: ChatFormat) -> Any:
    from transformers import GenerationConfig

    # Like real instruct models: generation ends at eos or at any end-of-turn token.
    eos_ids = [tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(fmt.stop)]
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=list(dict.fromkeys(eos_ids)),
        pad_token_id=tokenizer.pad_token_id,
    )


def build(
    arch: str,
    out: str | Path,
    size: str = "tiny",
    pretrain_steps: int | None = None,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Write a pretrained `arch` model of `size` to `out`; returns the folder."""
    import torch
    from transformers import AutoModelForCausalLM

    from slmforge.errors import InputError
    from slmforge.models.corpus import build_corpus, split_corpus
    from slmforge.models.load import quiet_transformers

    if arch not in ARCHES:
        raise InputError(f"unknown architecture {arch!r} (known: {', '.join(ARCHES)})")
    if size not in SIZES:
        raise InputError(f"unknown size {size!r} (known: {', '.join(SIZES)})")
    check_output(out, force)
    spec, fmt = SIZES[size], format_for_arch(arch)
    steps = spec.pretrain_steps if pretrain_steps is None else pretrain_steps

    progress.info(f"Gathering the pretraining corpus for a {size} {arch} model")
    heldout: list[str] = []
    if spec.heldout_every:
        docs, heldout = split_corpus(fmt, spec.heldout_every, spec.corpus_chars)
    else:
        docs = build_corpus(fmt, spec.corpus_chars)
    tokenizer = train_tokenizer(docs, fmt, spec.vocab)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        model_config(arch, spec, tokenizer), dtype=torch.float32
    )
    metrics = pretrain(model, _token_stream(tokenizer, docs), spec, steps, seed)
    if heldout:
        metrics |= heldout_metrics(model, _token_stream(tokenizer, heldout), spec.seq_len)
        metrics["heldout_documents"] = len(heldout)
    model.generation_config = generation_config(tokenizer, fmt)

    quiet_transformers()
    with artifact(out, "model", force) as art:
        model.save_pretrained(art.path)
        save_tokenizer(tokenizer, art.path)
        art.manifest.chat_template = fmt.template
        art.manifest.stop = [*fmt.stop, fmt.eos] if fmt.eos not in fmt.stop else list(fmt.stop)
        art.manifest.config = {
            **asdict(spec),
            "arch": arch,
            "size": size,
            "pretrain_steps": steps,
            "seed": seed,
            "chat_format": fmt.name,
        }
        art.manifest.metrics = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "corpus_chars": sum(map(len, docs)),
            **metrics,
        }
    progress.info(f"Wrote {out}")
    return Path(out)
