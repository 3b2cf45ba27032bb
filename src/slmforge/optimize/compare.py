"""`slmforge optimize --compare rtn,k_quant,gptq,awq,int8 --eval-data FILE`: a quality ladder.

Each entry is built by the ordinary `optimize()` (checks, calibration, build, verification) into
`OUT/NAME/`, then measured against the source PyTorch model on held-out text, teacher-forced:

- every `--eval-data` row is rendered with the model's chat template and the WHOLE text is scored
  (system, user and assistant tokens alike: quantization error is not specific to the reply, and
  scoring everything gives more positions from the same rows); rows are cut to --eval-seq-len;
- `kl`: mean over positions of KL(source || variant) of the next-token distributions;
  `agreement`: share of positions where both pick the same top-1 token; `ppl` / `ppl_source`:
  perplexity of the text's next tokens under the variant / the source model;
- `size_bytes`: every file of the variant's folder; `build_s`: calibration + build, as the
  variant's manifest records it (verification excluded); `tokens_per_s`: greedy decode of one
  stream after a short prompt, warmed up first.

Memory and disk stay bounded: the source's log-probs are never kept (rows x tokens x vocab x 4
bytes would be ~10 GB at a 150k vocabulary and 32 rows of 512 tokens). The source pass keeps
each row's final hidden states (tokens x hidden) and the LM head's weight once in a scratch
folder; each variant recomputes the source's logits from them, a few positions at a time
(`POSITION_CHUNK`), so at most one row of the variant's logits and one chunk of the source's
are in memory. The whole ladder is one artifact folder, so a failure anywhere leaves nothing
behind.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from slmforge import progress
from slmforge.artifacts import artifact, check_output, read_manifest, source_of
from slmforge.config.optimize import OptimizeConfig
from slmforge.config.precisions import QUANT_ALGOS
from slmforge.errors import InputError
from slmforge.optimize import onnx_build

KIND = "optimize_compare"
PROMPT_TOKENS = 32  # the decode-speed prompt: short, so decoding dominates the timing
DECODE_TOKENS = 64
WARMUP_TOKENS = 8
POSITION_CHUNK = 64  # source positions whose logits are recomputed at once


@dataclass
class Variant:
    name: str
    precision: str
    algo: str | None
    kl: float
    ppl: float
    ppl_source: float
    agreement: float
    size_bytes: int
    build_s: float
    tokens_per_s: float


@dataclass
class Reference:
    """The source model's side of the measurement: rows, and where their hidden states and
    the LM head are kept (`source_pass`)."""

    rows: list[list[int]]
    scratch: Path
    ppl: float
    positions: int

    def head(self) -> np.ndarray:
        """The LM head's weight [vocab, hidden], fp32, memory-mapped."""
        return np.load(self.scratch / "head.npy", mmap_mode="r")

    def log_probs(self, k: int) -> Iterator[np.ndarray]:
        """The source's log-probs [positions, vocab] of row `k`, `POSITION_CHUNK` at a time."""
        head = self.head()
        hidden = np.load(self.scratch / f"row{k}.npy")
        for start in range(0, len(hidden), POSITION_CHUNK):
            yield log_softmax(hidden[start : start + POSITION_CHUNK] @ head.T)


def compare(cfg: OptimizeConfig) -> Path:
    """Build and measure every `cfg.compare` entry; write OUT with compare.json/.md/.svg."""
    source = onnx_build.resolve_model(cfg.model)
    onnx_build.check_architecture(source)
    check_output(cfg.out, cfg.force)
    from slmforge.models.load import load_tokenizer

    tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    assert cfg.eval_data is not None  # the config requires it with --compare
    rows = eval_rows(cfg.eval_data, tokenizer, cfg.eval_rows, min(cfg.eval_seq_len, cfg.max_length))
    _check_calibration(cfg, tokenizer)
    with (
        artifact(cfg.out, KIND, force=cfg.force) as art,
        tempfile.TemporaryDirectory(prefix="slmforge-compare-") as scratch,
    ):
        reference = source_pass(source, rows, Path(scratch), cfg.trust_remote_code)
        variants = []
        for entry in cfg.compare:
            progress.info(f"ladder: building {entry} ({len(variants) + 1}/{len(cfg.compare)})")
            variants.append(_variant(cfg, entry, art.path, reference))
        report = _report(cfg, source, reference, variants)
        art.write_json("compare.json", report)
        (art.path / "compare.svg").write_text(chart(variants), encoding="utf-8")
        (art.path / "compare.md").write_text(markdown(report, variants), encoding="utf-8")
        art.manifest.source = {"model": source_of(source, "model")}
        art.manifest.source["eval_data"] = source_of(cfg.eval_data, "data")
        if cfg.calibration_data is not None:
            art.manifest.source["calibration_data"] = source_of(cfg.calibration_data, "data")
        art.manifest.config = cfg.model_dump(mode="json")
        art.manifest.metrics = {v.name: asdict(v) for v in variants}
        art.manifest.details = {"variants": list(cfg.compare), "scoring": "whole text"}
        art.manifest.chat_template = tokenizer.chat_template
    progress.info(f"wrote {cfg.out}")
    return Path(cfg.out)


def eval_rows(path: Path, tokenizer: Any, limit: int, seq_len: int) -> list[list[int]]:
    """Token ids of the first `limit` rows of `path`, chat-rendered, cut to `seq_len`."""
    from slmforge.data.formats import read_examples

    examples = read_examples(path)  # missing file, format and record errors name file:line
    if not tokenizer.chat_template:
        raise InputError(
            "--compare renders --eval-data with the model's chat template; it has none"
        )
    rows = []
    for example in examples[:limit]:
        text = tokenizer.apply_chat_template(example.messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:seq_len]
        if len(ids) >= 2:  # one token predicts nothing
            rows.append(ids)
    if not rows:
        raise InputError(f"{path}: no rows with text to measure --compare on")
    return rows


def _check_calibration(cfg: OptimizeConfig, tokenizer: Any) -> None:
    """Read the calibration data before the first build, so a bad file fails in seconds, not
    after the variants before the first calibrated one are built."""
    if not any(e in QUANT_ALGOS and QUANT_ALGOS[e].calibrated for e in cfg.compare):
        return
    from slmforge.optimize import calibration

    assert cfg.calibration_data is not None  # the config requires it for gptq/awq
    calibration.calibration_windows(
        cfg.calibration_data,
        tokenizer,
        cfg.calibration_samples,
        cfg.calibration_seq_len,
        cfg.max_length,
    )


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def source_pass(
    source: Path, rows: list[list[int]], scratch: Path, trust_remote_code: bool
) -> Reference:
    """Run the source model once per row; keep its final hidden states and LM head on disk
    (`Reference.log_probs` recomputes the logits from them); return its perplexity."""
    import torch

    from slmforge.models.load import load_causal_lm

    model = load_causal_lm(source, dtype="float32", trust_remote_code=trust_remote_code)
    head = model.get_output_embeddings().weight.detach().float().numpy()
    np.save(scratch / "head.npy", head)
    reference = Reference(rows, scratch, 0.0, 0)
    nll = 0.0
    with progress.task("ladder: source model", total=len(rows)) as task, torch.inference_mode():
        for k, ids in enumerate(rows):
            decoder = model.get_decoder()(input_ids=torch.tensor([ids]))
            np.save(scratch / f"row{k}.npy", decoder.last_hidden_state[0, :-1].float().numpy())
            targets = np.asarray(ids[1:])
            for start, log_p in zip(
                range(0, len(targets), POSITION_CHUNK), reference.log_probs(k), strict=True
            ):
                picked = targets[start : start + len(log_p)]
                nll -= float(log_p[np.arange(len(picked)), picked].sum())
            reference.positions += len(targets)
            task.advance()
    del model
    reference.ppl = math.exp(nll / reference.positions)
    return reference


def measure(folder: Path, reference: Reference) -> dict[str, float]:
    """kl, agreement, ppl and decode speed of the ONNX model in `folder` against the source."""
    from slmforge.runtime.onnx_engine import OnnxEngine

    engine = OnnxEngine(folder)
    figures = score(engine.logits, reference)
    figures["tokens_per_s"] = decode_speed(engine, reference.rows[0][:PROMPT_TOKENS])
    return figures


def score(logits_of: Callable[[list[int]], Any], reference: Reference) -> dict[str, float]:
    """kl, agreement and ppl of a model (`logits_of(ids)` -> [len, vocab]) against the source,
    teacher-forced over the reference rows."""
    kl = nll = 0.0
    agree = 0
    for k, ids in enumerate(reference.rows):
        logits = np.asarray(logits_of(ids), dtype=np.float32)
        targets = np.asarray(ids[1:])
        for start, log_p in zip(
            range(0, len(targets), POSITION_CHUNK), reference.log_probs(k), strict=True
        ):
            # the builder may pad the vocabulary: only the source's tokens count
            log_q = log_softmax(logits[start : start + len(log_p), : log_p.shape[-1]])
            kl += float((np.exp(log_p) * (log_p - log_q)).sum())
            agree += int((log_p.argmax(-1) == log_q.argmax(-1)).sum())
            picked = targets[start : start + len(log_p)]
            nll -= float(log_q[np.arange(len(picked)), picked].sum())
    n = reference.positions
    return {
        "kl": max(kl / n, 0.0),  # float rounding can give -1e-9 for an exact copy
        "agreement": agree / n,
        "ppl": math.exp(nll / n),
    }


def decode_speed(engine: Any, prompt: list[int]) -> float:
    """Greedy decode tokens per second of one stream, after a warm-up session."""
    steps = max(min(DECODE_TOKENS, engine.max_length - len(prompt) - 1), 1)

    def run(count: int) -> float:
        with engine.session(None, len(prompt) + count + 1) as forward:
            logits = forward(prompt)
            started = time.perf_counter()
            for _ in range(count):
                logits = forward([int(np.argmax(logits))])
            return time.perf_counter() - started

    run(min(WARMUP_TOKENS, steps))
    return steps / max(run(steps), 1e-9)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _variant(cfg: OptimizeConfig, entry: str, root: Path, reference: Reference) -> Variant:
    from slmforge.optimize.run import optimize  # run.py dispatches here: import at call time

    variant_cfg = cfg.variant(entry, root / entry)
    folder = optimize(variant_cfg)
    manifest = read_manifest(folder)
    assert manifest is not None  # optimize() always writes one
    progress.info(f"ladder: measuring {entry} on {len(reference.rows)} rows")
    figures = measure(folder, reference)
    quantized = variant_cfg.precision in ("int4", "int8")
    return Variant(
        name=entry,
        precision=variant_cfg.precision,
        algo=variant_cfg.int4_algo if quantized else None,
        kl=figures["kl"],
        ppl=figures["ppl"],
        ppl_source=reference.ppl,
        agreement=figures["agreement"],
        size_bytes=folder_bytes(folder),
        build_s=float(manifest.metrics["build_s"]),
        tokens_per_s=figures["tokens_per_s"],
    )


def _report(
    cfg: OptimizeConfig, source: Path, reference: Reference, variants: list[Variant]
) -> dict[str, Any]:
    return {
        "model": str(source.resolve()),
        "eval_data": str(cfg.eval_data),
        "rows": len(reference.rows),
        "positions": reference.positions,
        "scoring": "whole chat-rendered text, teacher-forced",
        "ppl_source": reference.ppl,
        "variants": {v.name: asdict(v) for v in variants},
    }


COLUMNS = ("variant", "KL", "ppl", "ppl source", "top-1 agree", "size", "build", "tok/s")


def table_row(v: Variant) -> list[str]:
    """One ladder row as text, shared by compare.md and the CLI summary."""
    return [
        v.name if v.precision == v.name else f"{v.name} ({v.precision})",
        f"{v.kl:.4g}",
        f"{v.ppl:.3f}",
        f"{v.ppl_source:.3f}",
        f"{v.agreement:.1%}",
        f"{v.size_bytes / 1e6:.2f} MB",
        f"{v.build_s:.1f} s",
        f"{v.tokens_per_s:.1f}",
    ]


def variants_of(report: dict[str, Any]) -> list[Variant]:
    return [Variant(**fields) for fields in report["variants"].values()]


def markdown(report: dict[str, Any], variants: list[Variant]) -> str:
    lines = [
        f"# Quality ladder: {report['model']}",
        "",
        f"Measured on {report['rows']} rows ({report['positions']} positions) of "
        f"`{report['eval_data']}`, {report['scoring']}; source perplexity "
        f"{report['ppl_source']:.3f}. KL is the mean KL divergence of each variant's next-token "
        "distribution from the source model's (lower is closer).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(table_row(v)) + " |" for v in variants]
    lines += ["", "![KL divergence and size per variant](compare.svg)", ""]
    return "\n".join(lines)


PALETTE = ("#3b6fb6", "#e07b39", "#3a9a5b", "#b8475a", "#7a5bb5", "#8c7a3e")


def _panel(title: str, values: list[tuple[str, float, str]], top: float) -> list[str]:
    """Horizontal bars (label, value, value text) under `title`, starting at y = `top`."""
    x0, x1, row = 90.0, 400.0, 22
    high = max((v for _, v, _ in values), default=0.0) or 1.0
    parts = [f'<text x="4" y="{top + 14}" font-size="12" font-weight="bold">{escape(title)}</text>']
    for k, (label, value, text) in enumerate(values):
        y = top + 22 + k * row
        width = (x1 - x0) * value / high
        parts += [
            f'<text x="{x0 - 6}" y="{y + 13}" font-size="11" text-anchor="end">'
            f"{escape(label)}</text>",
            f'<rect x="{x0}" y="{y + 3}" width="{width:.1f}" height="{row - 8}" '
            f'fill="{PALETTE[k % len(PALETTE)]}" opacity="0.85"/>',
            f'<text x="{x0 + width + 4:.1f}" y="{y + 13}" font-size="10" fill="#444">'
            f"{escape(text)}</text>",
        ]
    return parts


def chart(variants: list[Variant]) -> str:
    """Two bar panels, KL from the source and folder size, one bar per variant (plain SVG:
    optimize sits below evaluate, whose charts it may not import, and needs no plotting lib)."""
    kl = [(v.name, v.kl, f"{v.kl:.3g}") for v in variants]
    size = [(v.name, v.size_bytes / 1e6, f"{v.size_bytes / 1e6:.2f} MB") for v in variants]
    panel = 30 + 22 * len(variants)
    body = _panel("KL divergence from the source (lower is better)", kl, 0)
    body += _panel("size", size, panel)
    height = 2 * panel + 8
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="480" height="{height}" '
        f'viewBox="0 0 480 {height}" role="img" aria-label="quality ladder">'
        + "".join(body)
        + "</svg>\n"
    )


def read_report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "compare.json").read_text(encoding="utf-8"))
