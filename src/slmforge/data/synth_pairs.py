"""`slmforge data synth --pairs`: preference pairs from a teacher and a student.

For each distinct prompt of `--prompts` (any file `data` reads: an example's conversation up to
its last user turn, or a pair's prompt), the teacher and the student answer, and the pair is
written as an OpenAI DPO row with the teacher's answer preferred and the student's not: tuning
the student on these pulls it toward the teacher ("like the cloud model, not like the base").
Pairs whose answers are the same after normalization teach nothing and are skipped (counted),
as are prompts the teacher's answer was cut off for (`max_tokens`) and empty answers.

Crash safety is `data synth`'s (`data/resumable.py`): each pair is appended and fsynced at
once, the sidecar `<out>.synth-pairs.json` (replaced atomically after every prompt) records
the options and how far the run got, and `--resume` repairs a torn last line, checks the
options match and continues with the next prompt, never asking a written prompt again.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.artifacts import source_of
from slmforge.config.data import SynthConfig
from slmforge.data import resumable
from slmforge.data.formats import Example, read_examples
from slmforge.data.preference import is_preference_file, read_preference_examples
from slmforge.data.resumable import (
    check_resumable_output,
    load_state,
    repair_last_line,
    save_state,
)
from slmforge.data.synth import normalize
from slmforge.errors import ConfigError, InputError, Interrupted, RemoteError
from slmforge.runtime.engine import Engine, GenParams, Message, complete

STATE_SUFFIX = ".synth-pairs.json"
# options that decide what the pairs are; a resumed run must use the same ones
_IDENTITY_OPTIONS = ("teacher", "student", "temperature", "max_tokens", "seed")


@dataclass
class PairSynthResult:
    out: Path
    state_path: Path
    rows: int  # pairs in `out` now
    added: int  # pairs this run added
    prompts: int  # distinct prompts to answer
    done: int  # prompts answered or skipped, over every run
    requests: int  # requests this run made (teacher and student)
    skipped: dict[str, int]  # prompts without a pair, by reason, over every run
    complete: bool  # every prompt done (or the --count cap reached)


@dataclass
class _State:
    options: dict[str, Any]
    next_prompt: int = 0  # index of the next prompt to answer
    requests: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def state_path_for(out: str | Path) -> Path:
    return resumable.state_path_for(out, STATE_SUFFIX)


def synthesize_pairs(
    config: SynthConfig, teacher: Engine | None = None, student: Engine | None = None
) -> PairSynthResult:
    """Write one pair per distinct prompt of `config.prompts` to `config.out`."""
    if not config.pairs or config.prompts is None or config.student is None:
        raise ConfigError("synthesize_pairs needs --pairs with --prompts and --student")
    out, state_path = Path(config.out), state_path_for(config.out)
    check_resumable_output(config.resume, config.force, out, state_path)
    prompts, duplicates = load_prompts(config.prompts)
    options = _identity(config, config.prompts)
    state = _load_state(state_path, options) if config.resume else None
    teacher = teacher or _engine(config.teacher, config)
    student = student or _engine(config.student, config)
    if config.force:
        out.unlink(missing_ok=True)
        state_path.unlink(missing_ok=True)
    existing = _written_prompts(out) if config.resume else set()
    if config.resume and existing and state is None:
        progress.warn(f"{state_path} is missing; resuming after the {len(existing)} pairs in {out}")
    state = state or _State(options, skipped=Counter(duplicate_prompt=duplicates) + Counter())
    limit = config.count if "count" in config.model_fields_set else None
    writer = _PairWriter(out, len(existing))
    before = writer.rows
    made = _run(teacher, student, config, prompts, existing, writer, state, state_path, limit)
    return PairSynthResult(
        out=out,
        state_path=state_path,
        rows=writer.rows,
        added=writer.rows - before,
        prompts=len(prompts),
        done=state.next_prompt,
        requests=made,
        skipped=dict(state.skipped),
        complete=state.next_prompt >= len(prompts) or (limit is not None and writer.rows >= limit),
    )


def _engine(spec: str, config: SynthConfig) -> Engine:
    from slmforge.runtime.specs import load_engine

    return load_engine(
        spec,
        api_key_env=config.api_key_env,
        timeout_s=config.timeout_s,
        max_retries=config.max_retries,
    )


# -- prompts --------------------------------------------------------------------------------
def _prompt_of(example: Example) -> list[Message] | None:
    """An example's conversation up to its last user turn (None when it has none)."""
    last = max((i for i, m in enumerate(example.messages) if m["role"] == "user"), default=None)
    return None if last is None else example.messages[: last + 1]


def _key(prompt: list[Message]) -> str:
    """What 'the same prompt' means for dedupe: the normalized system and user turns."""
    return "\n".join(normalize(m["content"]) for m in prompt if m["role"] in ("system", "user"))


def load_prompts(path: Path) -> tuple[list[list[Message]], int]:
    """The distinct prompts of a data file (examples or pairs), in file order, and how many
    repeats were left out. Prompts with tools are left out too: answers that call tools need
    the calls' results, which synthesis cannot produce."""
    candidates: list[tuple[list[Message] | None, bool]]
    if path.exists() and is_preference_file(path):
        candidates = [(p.prompt, p.uses_tools) for p in read_preference_examples(path)]
    else:
        candidates = [(_prompt_of(e), e.uses_tools) for e in read_examples(path)]
    prompts, seen, duplicates = [], set(), 0
    for prompt, uses_tools in candidates:
        if prompt is None or uses_tools:
            continue
        key = _key(prompt)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        prompts.append([{"role": m["role"], "content": m["content"]} for m in prompt])
    if not prompts:
        raise InputError(f"{path}: no prompts (user turns without tools) to answer")
    return prompts, duplicates


# -- the request loop -----------------------------------------------------------------------
def _run(
    teacher: Engine,
    student: Engine,
    config: SynthConfig,
    prompts: list[list[Message]],
    existing: set[str],
    writer: _PairWriter,
    state: _State,
    state_path: Path,
    limit: int | None,
) -> int:
    made = 0
    max_requests = config.max_requests or 2 * len(prompts)
    with progress.task("Synthesizing pairs", total=len(prompts)) as bar:
        bar.update(completed=state.next_prompt, pairs=writer.rows)
        try:
            while state.next_prompt < len(prompts) and made < max_requests:
                if limit is not None and writer.rows >= limit:
                    break
                prompt = prompts[state.next_prompt]
                if _key(prompt) not in existing:
                    reason, requests = _answer(
                        teacher, student, prompt, config, state.next_prompt, writer
                    )
                    made += requests
                    state.requests += requests
                    if reason:
                        state.skipped[reason] += 1
                state.next_prompt += 1
                _save_state(state_path, state, writer.rows)
                bar.update(
                    completed=state.next_prompt,
                    pairs=writer.rows,
                    skipped=sum(state.skipped.values()),
                )
        except KeyboardInterrupt:
            _save_state(state_path, state, writer.rows)
            raise Interrupted(
                f"interrupted; {writer.rows} pairs are kept in {writer.out}, "
                "run again with --resume to continue"
            ) from None
        except RemoteError as err:
            _save_state(state_path, state, writer.rows)
            raise RemoteError(
                f"{err}; {writer.rows} pairs are kept in {writer.out}, "
                "run again with --resume to continue",
                err.status,
            ) from err
        finally:
            writer.close()
    if not writer.rows:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(state.skipped.items()) if v)
        progress.warn(f"no pairs written to {writer.out} (skipped prompts: {reasons or 'none'})")
    elif state.next_prompt < len(prompts) and (limit is None or writer.rows < limit):
        progress.warn(
            f"stopped after {made} requests at prompt {state.next_prompt}/{len(prompts)}; "
            "raise --max-requests or run again with --resume"
        )
    return made


def _answer(
    teacher: Engine,
    student: Engine,
    prompt: list[Message],
    config: SynthConfig,
    index: int,
    writer: _PairWriter,
) -> tuple[str | None, int]:
    """Ask both engines and write the pair; returns why there is none (or None) and the
    number of requests made."""
    params = GenParams(
        max_tokens=config.max_tokens, temperature=config.temperature, seed=config.seed + index
    )
    preferred = complete(teacher, prompt, params)
    if preferred.finish_reason == "length":
        return "teacher_truncated", 1
    rejected = complete(student, prompt, params)
    chosen_text, rejected_text = preferred.text.strip(), rejected.text.strip()
    if not chosen_text or not rejected_text:
        return "empty_answer", 2
    if normalize(chosen_text) == normalize(rejected_text):
        return "identical", 2
    writer.write(prompt, chosen_text, rejected_text)
    return None, 2


class _PairWriter:
    """Appends pairs to `out` as OpenAI DPO rows, each flushed and fsynced so a crash keeps it."""

    def __init__(self, out: Path, rows: int) -> None:
        self.out = out
        self.rows = rows
        self._handle: Any = None

    def write(self, prompt: list[Message], chosen: str, rejected: str) -> None:
        if self._handle is None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.out, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        row = {
            "input": {"messages": prompt},
            "preferred_output": [{"role": "assistant", "content": chosen}],
            "non_preferred_output": [{"role": "assistant", "content": rejected}],
        }
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.rows += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _written_prompts(out: Path) -> set[str]:
    """The prompt keys of the pairs already in `out` (its last line repaired first)."""
    if not out.exists():
        return set()
    repair_last_line(out)
    if not out.read_bytes().strip():
        return set()
    return {_key(p.prompt) for p in read_preference_examples(out)}


# -- state ----------------------------------------------------------------------------------
def _identity(config: SynthConfig, prompts: Path) -> dict[str, Any]:
    options = {name: getattr(config, name) for name in _IDENTITY_OPTIONS}
    options["prompts_sha256"] = source_of(prompts).sha256
    return options


def _load_state(path: Path, options: dict[str, Any]) -> _State | None:
    def fields(data: dict[str, Any]) -> _State:
        next_prompt, requests = int(data["next_prompt"]), int(data["requests"])
        return _State(options, next_prompt, requests, Counter(data["skipped"]))

    return load_state(path, options, "synth --pairs", fields)


def _save_state(path: Path, state: _State, rows: int) -> None:
    save_state(
        path,
        {
            "options": state.options,
            "next_prompt": state.next_prompt,
            "requests": state.requests,
            "rows": rows,
            "skipped": dict(state.skipped),
        },
    )
