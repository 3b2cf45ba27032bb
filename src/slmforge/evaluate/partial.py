"""`OUT.partial/`: what an eval has done so far, so an interrupted run continues where it stopped.

Each answer is appended to `answers.jsonl` (flushed and fsynced) as soon as it arrives, keyed by
the target's spec, the generation options and the row's prompt; judge replies go to
`judge.jsonl`. `--resume` reuses every answer whose key still matches (changed options simply
ask again), a line cut off by a crash is ignored, and failed requests are never cached, so they
are retried. The folder is removed once the report is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slmforge.errors import InputError
from slmforge.models.tool_format import hermes_call_text
from slmforge.runtime.engine import Completion


@dataclass
class Answer:
    """One target's answer to one row (or the error that took its place)."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    total_s: float | None = None
    tokens_per_s: float | None = None
    error: str | None = None
    cached: bool = field(default=False, compare=False)

    @classmethod
    def of(cls, completion: Completion) -> Answer:
        text = completion.text
        if completion.tool_calls:  # the text form references of tool-call rows take
            calls = [
                {"function": {"name": call.name, "arguments": call.arguments}}
                for call in completion.tool_calls
            ]
            text = hermes_call_text({"content": text, "tool_calls": calls})
        return cls(
            text=text,
            finish_reason=completion.finish_reason,
            prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
            ttft_s=completion.timings.ttft_s,
            total_s=completion.timings.total_s,
            tokens_per_s=completion.timings.tokens_per_s,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "cached"}


def partial_dir(out: Path) -> Path:
    return out.parent / f"{out.name}.partial"


def answer_key(spec: str, params: dict[str, Any], row_key: str) -> str:
    text = json.dumps([spec, params, row_key], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def claim_partial(folder: Path, resume: bool, force: bool, what: str) -> Path:
    """`folder` as an interrupted `what` to continue (`--resume`) or to start over (`--force`,
    which removes it); without either, an existing one is an error. Not created here: the
    first thing kept makes it, so input refused early leaves nothing."""
    if folder.exists() and not (resume or force):
        raise InputError(
            f"{folder} holds an interrupted {what}; pass --resume to continue it "
            "or --force to start over"
        )
    if resume and not folder.exists():
        raise InputError(f"--resume: {folder} does not exist; run without --resume")
    if force and not resume and folder.exists():
        shutil.rmtree(folder)
    return folder


class PartialRun:
    def __init__(self, out: Path, resume: bool, force: bool) -> None:
        self.folder = claim_partial(partial_dir(out), resume, force, "eval")
        self.answers_path = self.folder / "answers.jsonl"
        self.judge_path = self.folder / "judge.jsonl"
        self.answers: dict[str, Answer] = self._load() if resume else {}
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Answer]:
        answers: dict[str, Answer] = {}
        if not self.answers_path.is_file():
            return answers
        for line in self.answers_path.read_text(encoding="utf-8").splitlines():
            try:
                item = json.loads(line)
                answers[item["key"]] = Answer(**item["answer"], cached=True)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # cut off by a crash: that row is asked again
        return answers

    def get(self, key: str) -> Answer | None:
        return self.answers.get(key)

    def put(self, key: str, answer: Answer) -> None:
        if answer.error is not None:
            return
        line = json.dumps({"key": key, "answer": answer.to_dict()}, ensure_ascii=False) + "\n"
        with self._lock:
            self.answers[key] = answer
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.answers_path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
