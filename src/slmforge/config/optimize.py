"""Options of `slmforge optimize` (Hugging Face model -> ONNX Runtime GenAI folder, or a GGUF
folder for llama.cpp and Ollama with `--format gguf`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from slmforge.config import StrictModel
from slmforge.config.adapters import adapter_spec, checked_adapter_names
from slmforge.config.gguf import GGUF_ALIASES, GGUF_PRECISIONS, GgufConfig
from slmforge.config.precisions import PRECISIONS, QUANT_ALGOS, QuantAlgo

OnnxDevice = Literal["cpu", "cuda", "dml"]
AnyPrecision = Literal[tuple(PRECISIONS) + tuple(GGUF_PRECISIONS)]  # type: ignore[valid-type]

# Defaults of --min-agreement and --max-kl per precision (config/precisions.py).
DEFAULT_MIN_AGREEMENT = {name: p.min_agreement for name, p in PRECISIONS.items()}
DEFAULT_MAX_KL = {name: p.max_kl for name, p in PRECISIONS.items()}

# What a --compare entry may name: an int4 method (QUANT_ALGOS) or a precision.
COMPARE_PRECISIONS = ("int8", "fp16", "fp32")


class OptimizeConfig(StrictModel):
    model: str = Field(description="Model folder (or a hub id already in the local cache).")
    out: Path = Field(description="Output folder for the ONNX (or GGUF) model.")
    format: Literal["onnx", "gguf"] = Field(
        "onnx",
        description="onnx: ONNX Runtime GenAI folder; gguf: llama.cpp / Ollama folder (GGUF "
        "weights, adapters as GGUF LoRA files, Modelfile).",
    )
    adapter: list[str] = Field(
        default_factory=list,
        description="LoRA adapter as NAME=DIR or DIR (repeat for several; switchable at runtime).",
    )
    precision: AnyPrecision = Field(
        "int4",
        description="Weight precision: "
        + ", ".join(PRECISIONS)
        + " (onnx); "
        + ", ".join(GGUF_PRECISIONS)
        + " (gguf, where int4/int8/fp16 mean q4_0/q8_0/f16).",
    )
    device: OnnxDevice = Field("cpu", description="Execution provider the model is built for.")
    max_length: int = Field(
        2048, gt=0, description="Context length (prompt + reply) the KV cache is sized for."
    )
    merge_adapter: bool = Field(False, description="Bake the one --adapter into the weights.")
    int4_block_size: Literal[16, 32, 64, 128, 256] = Field(
        32, description="Quantization block size for int4/int8."
    )
    int4_symmetric: bool = Field(True, description="Symmetric (int4) vs asymmetric (uint4).")
    int4_accuracy_level: int | None = Field(
        None, ge=1, le=4, description="MatMulNBits compute type: 1 fp32, 2 fp16, 3 bf16, 4 int8."
    )
    int4_algo: QuantAlgo = Field(
        "default",
        description="Quantization method: "
        + "; ".join(f"{name}: {method.description}" for name, method in QUANT_ALGOS.items())
        + ".",
    )
    calibration_data: Path | None = Field(
        None,
        description="Prompts for --int4-algo gptq/awq (any file `slmforge data` reads, rendered "
        "with the model's chat template; e.g. your training data). Never downloaded.",
    )
    calibration_samples: int = Field(32, gt=0, description="Calibration samples (token windows).")
    calibration_seq_len: int = Field(
        512, gt=0, description="Tokens per calibration sample (cut to the model's context)."
    )
    verify: bool = Field(True, description="Compare the ONNX model with PyTorch before keeping it.")
    verify_data: Path | None = Field(None, description="Prompts for verification (any data file).")
    verify_prompts: int = Field(8, gt=0, description="Prompts used for verification.")
    verify_tokens: int = Field(16, gt=0, description="Greedy steps compared per prompt.")
    min_agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Fail below this top-1 agreement on positions where PyTorch is confident "
        "(default: fp32 1.0, fp16/int8 0.95, int4 0.9).",
    )
    max_kl: float | None = Field(
        None,
        ge=0,
        description="Fail above this mean KL divergence from PyTorch's next-token distribution "
        "(default: fp32 1e-4, fp16 5e-3, int8 0.02, int4 0.15, or twice the KL of PyTorch with "
        "its own weights rounded the same way, when that is larger).",
    )
    compare: list[str] = Field(
        default_factory=list,
        description="Build a quality ladder instead of one model: one variant per entry (an "
        "int4 method: "
        + ", ".join(QUANT_ALGOS)
        + "; or "
        + ", ".join(COMPARE_PRECISIONS)
        + "), comma-separated or repeated, each under OUT/NAME, with OUT/compare.json and "
        "OUT/compare.md. Needs --eval-data.",
    )
    eval_data: Path | None = Field(
        None,
        description="Held-out text for --compare (any file `slmforge data` reads, rendered with "
        "the chat template): KL, perplexity and agreement are measured on it.",
    )
    eval_rows: int = Field(32, gt=0, description="Rows of --eval-data --compare measures.")
    eval_seq_len: int = Field(
        512, gt=0, description="Tokens per --eval-data row --compare scores (longer rows are cut)."
    )
    force: bool = Field(False, description="Replace OUT if it exists.")
    allow_pickle: bool = Field(False, description="Allow loading pickle (.bin) checkpoints.")
    trust_remote_code: bool = Field(False)

    @field_validator("adapter")
    @classmethod
    def _check_adapters(cls, value: list[str]) -> list[str]:
        checked_adapter_names(value)
        return value

    @field_validator("compare", mode="before")
    @classmethod
    def _split_compare(cls, value: object) -> object:
        """`--compare rtn,gptq` and `--compare rtn --compare gptq` mean the same ladder."""
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return value
        return [part.strip() for item in value for part in str(item).split(",") if part.strip()]

    @field_validator("compare")
    @classmethod
    def _check_compare(cls, value: list[str]) -> list[str]:
        allowed = (*QUANT_ALGOS, *COMPARE_PRECISIONS)
        for entry in value:
            if entry not in allowed:
                raise ValueError(f"unknown entry {entry!r}; choose from {', '.join(allowed)}")
        if len(set(value)) != len(value):
            raise ValueError(f"entries must be unique, got {', '.join(value)}")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> OptimizeConfig:
        if self.merge_adapter and len(self.adapter) != 1:
            raise ValueError("--merge-adapter needs exactly one --adapter")
        if self.compare:
            self._check_ladder()
        if self.format == "gguf":
            if GGUF_ALIASES.get(self.precision, self.precision) not in GGUF_PRECISIONS:
                choices = ", ".join(GGUF_PRECISIONS)
                raise ValueError(
                    f"--precision {self.precision}: with --format gguf choose {choices}"
                )
            return self
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"--precision {self.precision} is a GGUF precision; add --format gguf, or choose "
                + ", ".join(PRECISIONS)
            )
        method = QUANT_ALGOS[self.int4_algo]
        if method.calibrated:
            self._check_calibrated(method.name)
        return self

    def gguf_config(self) -> GgufConfig:
        """The GGUF export's own options (`optimize/gguf`), from these."""
        return GgufConfig(
            model=self.model,
            out=self.out,
            precision=GGUF_ALIASES.get(self.precision, self.precision),
            adapter=self.adapter,
            merge_adapter=self.merge_adapter,
            verify=self.verify,
            verify_data=self.verify_data,
            verify_prompts=self.verify_prompts,
            verify_tokens=self.verify_tokens,
            min_agreement=self.min_agreement,
            max_kl=self.max_kl,
            force=self.force,
        )

    def _check_calibrated(self, algo: str) -> None:
        if not PRECISIONS[self.precision].quantized:
            raise ValueError(f"--int4-algo {algo} needs --precision int4 or int8")
        if self.calibration_data is None:
            raise ValueError(
                f"--int4-algo {algo} needs --calibration-data FILE: prompts from your own data "
                "(e.g. the training file), which optimize never downloads"
            )

    def _check_ladder(self) -> None:
        if self.eval_data is None:
            raise ValueError("--compare needs --eval-data FILE: held-out text to measure on")
        if self.format != "onnx":
            raise ValueError("--compare builds ONNX variants; drop --format gguf")
        if self.adapter:
            raise ValueError("--compare measures the base model; drop --adapter")
        calibrated = [e for e in self.compare if e in QUANT_ALGOS and QUANT_ALGOS[e].calibrated]
        if calibrated and self.calibration_data is None:
            # Never defaulted to --eval-data: calibrating on the text the ladder is measured on
            # would flatter the calibrated methods.
            raise ValueError(
                f"--compare {','.join(calibrated)} needs --calibration-data FILE, separate from "
                "--eval-data (calibrating on the measured text would flatter them)"
            )

    def variant(self, entry: str, out: Path) -> OptimizeConfig:
        """The one-build config of ladder entry `entry` (an int4 method or a precision)."""
        values = self.model_dump() | {"compare": [], "eval_data": None, "out": out}
        if entry in QUANT_ALGOS:
            values |= {"precision": "int4", "int4_algo": entry}
        else:
            values |= {"precision": entry, "int4_algo": "default"}
        return OptimizeConfig.model_validate(values)

    def adapters(self) -> dict[str, Path]:
        return dict(adapter_spec(spec) for spec in self.adapter)

    def kl_threshold(self) -> float:
        return self.max_kl if self.max_kl is not None else DEFAULT_MAX_KL[self.precision]

    def agreement_threshold(self) -> float:
        if self.min_agreement is not None:
            return self.min_agreement
        return DEFAULT_MIN_AGREEMENT[self.precision]
