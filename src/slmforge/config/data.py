"""Options of `slmforge data ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from slmforge.config import StrictModel

InputFormat = Literal[
    "auto",
    "prompt_response",
    "messages",
    "alpaca",
    "sharegpt",
    "openai_dpo",  # preference pairs: input.messages, preferred_output, non_preferred_output
    "trl",  # preference pairs: prompt/chosen/rejected, plain text or conversational
    "csv",
    "parquet",
    "hf_dataset",
]
OutputFormat = Literal["messages", "prompt_response", "text", "openai_dpo", "trl", "trl_text"]
# what a preference file converts to (data/preference_write.py); the others are examples
PAIR_OUTPUT_FORMATS = ("openai_dpo", "trl", "trl_text")


class ReadOptions(StrictModel):
    """How to read an input data file (shared by every data command and by finetune)."""

    input_format: InputFormat = Field("auto", description="Input format; auto detects it.")
    prompt_field: str | None = Field(None, description="Column/key holding the prompt.")
    response_field: str | None = Field(None, description="Column/key holding the response.")
    system_prompt: str | None = Field(
        None, description="System message to add to every example that has none."
    )


class ConvertConfig(ReadOptions):
    input: Path = Field(description="Data file or saved Hugging Face dataset folder.")
    out: Path = Field(description="Output file.")
    output_format: OutputFormat = Field(
        "messages",
        description="What to write: messages, prompt_response or text for examples; "
        "openai_dpo (the default for a pair file), trl or trl_text for preference pairs.",
    )
    text_template: str | None = Field(
        None,
        description=r"Render plain text, e.g. '<|user|>\n{prompt}<|end|>\n<|assistant|>\n"
        r"{response}<|end|>' (implies --output-format text).",
    )
    force: bool = Field(False, description="Replace the output if it exists.")


class ValidateConfig(ReadOptions):
    files: list[Path] = Field(description="Files to check; train first, then validation.")
    tokenizer: str | None = Field(
        None, description="Tokenizer (model folder or hub id) for lengths."
    )
    max_seq_len: int = Field(2048, gt=0, description="Warn for examples longer than this.")
    min_examples: int = Field(10, ge=0, description="Warn when a file has fewer examples.")
    report: Path | None = Field(None, description="Write every finding to this JSON file.")
    drop_invalid: bool = Field(False, description="Write a clean copy without invalid rows.")
    out: Path | None = Field(None, description="Where --drop-invalid writes the clean copy.")
    output_format: OutputFormat = Field(
        "messages",
        description="Format of the clean copy (a pair file's copy is openai_dpo unless "
        "trl or trl_text is given).",
    )
    force: bool = Field(False, description="Replace the outputs if they exist.")


class SplitConfig(ReadOptions):
    input: Path = Field(description="Data file to split.")
    out_dir: Path = Field(description="Folder for train.jsonl, validation.jsonl, test.jsonl.")
    validation: float = Field(0.1, ge=0, description="Ratio (<1) or count (>=1) for validation.")
    test: float = Field(0.0, ge=0, description="Ratio (<1) or count (>=1) for test.")
    seed: int = Field(42, description="Seed of the deterministic shuffle.")
    force: bool = Field(False, description="Replace the outputs if they exist.")


class StatsConfig(ReadOptions):
    input: Path = Field(description="Data file.")
    tokenizer: str | None = Field(None, description="Tokenizer (model folder or hub id).")
    json_output: bool = Field(False, description="Print JSON instead of a table.")


class SampleConfig(StrictModel):
    out: Path = Field(Path("travel.jsonl"), description="Where to write the sample jsonl.")
    kind: Literal["travel", "tools", "preference"] = Field(
        "travel",
        description="travel: the travel-assistant prompt/response pairs; tools: travel "
        "questions answered by a call to one of four declared functions (OpenAI rows with "
        "tools and tool_calls); preference: OpenAI DPO rows, each travel prompt with its own "
        "answer preferred and the answer of one of 10 set-aside rows not.",
    )
    count: int | None = Field(
        None,
        gt=0,
        le=2000,
        description="Rows to write: tools 400 by default; preference one per travel pair by "
        "default (more repeat prompts with other non-preferred answers); travel writes all.",
    )
    seed: int = Field(0, description="Seed of --kind tools and preference.")
    force: bool = Field(False, description="Replace the output if it exists.")


class SynthConfig(StrictModel):
    seed_data: Path | None = Field(
        None, description="Seed examples (any readable format); not with --pairs."
    )
    out: Path = Field(
        description="Output jsonl (prompt/response, or OpenAI DPO rows with --pairs); "
        "appended to on --resume."
    )
    teacher: str = Field(
        description="Teacher engine: openai:MODEL@BASE_URL, profile:NAME or a model folder."
    )
    pairs: bool = Field(
        False,
        description="Write preference pairs instead: for each prompt of --prompts, the "
        "teacher's answer preferred and the --student's answer not.",
    )
    student: str | None = Field(
        None,
        description="With --pairs: the student engine whose answers are not preferred (a "
        "model folder, openai:MODEL@BASE_URL or profile:NAME).",
    )
    prompts: Path | None = Field(
        None,
        description="With --pairs: a data file (examples or pairs, any readable format) whose "
        "conversations up to their last user turn are the prompts.",
    )
    topic: str = Field("", description="Topic of the new examples.")
    count: int = Field(
        50,
        gt=0,
        description="How many new examples to write (with --pairs: at most this many pairs "
        "if given, else one per distinct prompt).",
    )
    per_request: int = Field(5, gt=0, le=50, description="Examples asked for per request.")
    seed_examples: int = Field(5, gt=0, description="Seed examples shown per request.")
    temperature: float = Field(0.9, ge=0, le=2)
    max_tokens: int = Field(1024, gt=0, description="Max tokens of each teacher reply.")
    max_requests: int | None = Field(None, gt=0, description="Stop after this many requests.")
    max_retries: int = Field(5, ge=0, description="Retries on 429/5xx per request.")
    timeout_s: float = Field(60.0, gt=0, description="Timeout of each request in seconds.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Env var holding the teacher's key.")
    seed: int = Field(0, description="Seed for picking seed examples (and of sampling).")
    resume: bool = Field(False, description="Continue an interrupted run in --out.")
    force: bool = Field(False, description="Replace the output if it exists.")

    @model_validator(mode="after")
    def _check_mode(self) -> SynthConfig:
        if self.pairs:
            missing = [
                f"--{name}" for name in ("student", "prompts") if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"--pairs needs {' and '.join(missing)}")
            if self.seed_data is not None:
                raise ValueError(
                    "--pairs reads its prompts from --prompts FILE; the SEED_DATA argument is "
                    "for synth without --pairs"
                )
            return self
        if self.seed_data is None:
            raise ValueError("missing the SEED_DATA argument (seed examples), or pass --pairs")
        for name in ("student", "prompts"):
            if getattr(self, name) is not None:
                raise ValueError(f"--{name} is only used with --pairs")
        return self


AugmentStrategy = Literal["noise", "paraphrase", "multi_turn", "back_translation"]


class AugmentConfig(ReadOptions):
    input: Path = Field(description="Data to augment (any readable format).")
    out: Path = Field(description="Output jsonl: the originals, then the new rows with meta.")
    strategy: list[AugmentStrategy] = Field(
        default_factory=lambda: ["noise"],
        description="noise, paraphrase, multi_turn, back_translation (repeat the option).",
    )
    copies: int = Field(1, gt=0, le=20, description="New rows per original and strategy.")
    teacher: str | None = Field(
        None,
        description="Teacher engine for paraphrase, multi_turn and back_translation: "
        "openai:MODEL@BASE_URL, profile:NAME or a model folder.",
    )
    regenerate_response: bool = Field(
        False, description="Have the teacher answer each new prompt instead of keeping the reply."
    )
    pivot_language: str = Field("French", description="Language back-translation goes through.")
    noise_level: float = Field(
        0.3, gt=0, le=1, description="How much noise: the share of words a noise edit touches."
    )
    near_duplicate: float | None = Field(
        0.95,
        gt=0,
        le=1,
        description="Drop teacher rows whose new text has embedding similarity at or above "
        "this to an existing prompt (exact duplicates are always dropped).",
    )
    include_original: bool = Field(True, description="Write the original rows first.")
    output_format: Literal["messages", "prompt_response"] = Field("messages")
    temperature: float = Field(0.8, ge=0, le=2, description="Teacher sampling temperature.")
    max_tokens: int = Field(512, gt=0, description="Max tokens of each teacher reply.")
    max_requests: int | None = Field(None, gt=0, description="Stop after this many requests.")
    time_limit_s: float | None = Field(None, gt=0, description="Stop after this many seconds.")
    max_retries: int = Field(5, ge=0, description="Retries on 429/5xx per request.")
    timeout_s: float = Field(60.0, gt=0, description="Timeout of each request in seconds.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Env var holding the teacher's key.")
    seed: int = Field(0, description="Seed of the noise edits (same seed, same output).")
    resume: bool = Field(False, description="Continue an interrupted run in --out.")
    force: bool = Field(False, description="Replace the output if it exists.")
