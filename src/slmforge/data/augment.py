"""`slmforge data augment`: more training rows from the ones a user has, with care.

Strategies: `noise` (typos, casing, punctuation, abbreviations in user turns, seeded; see
`noise.py`), and through a teacher engine `paraphrase` (new wordings of the prompt),
`back_translation` (prompt -> pivot language -> back) and `multi_turn` (a follow-up question
and answer appended to a single-turn row). Responses are kept unless `--regenerate-response`
asks the teacher to answer the new prompt. Every new row carries
`"meta": {"augmented_from": LINE, "strategy": ..., "group": ...}`; `group` is the original's
prompt key, so `data split` keeps an original and all its variants in one part.

Exact duplicates (same normalized user turns as any row) are dropped; teacher rows are also
dropped when their new text is a near-duplicate (embedding cosine >= `--near-duplicate`) of any
prompt so far. Noise rows are near-duplicates by design and only face the exact check.

Work goes in units (one original x one strategy) in a fixed order. A unit's rows are appended
in one write and fsynced, then `<out>.augment.json` records the next unit, so `--resume`
continues after a crash or Ctrl-C without repeating or losing a unit. Requests and time are
bounded (`--max-requests`, `--time-limit-s`).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.artifacts import source_of
from slmforge.config.data import AugmentConfig, ReadOptions
from slmforge.data import resumable
from slmforge.data.dedupe import Embedder, NearDuplicates
from slmforge.data.formats import Example, read_examples
from slmforge.data.noise import noisy
from slmforge.data.replies import MAX_TEXT_CHARS, parse_strings, parse_turn
from slmforge.data.resumable import (
    check_resumable_output,
    load_state,
    repair_last_line,
    save_state,
)
from slmforge.data.writing import WRITERS, write_examples
from slmforge.errors import ConfigError, InputError, Interrupted, RemoteError
from slmforge.runtime.engine import Engine, GenParams, Message, complete

STATE_SUFFIX = ".augment.json"
TEACHER_STRATEGIES = ("paraphrase", "multi_turn", "back_translation")
NOISE_ATTEMPTS = 5
_IDENTITY = (
    "strategy",
    "copies",
    "teacher",
    "regenerate_response",
    "pivot_language",
    "noise_level",
    "near_duplicate",
    "include_original",
    "output_format",
    "temperature",
    "max_tokens",
    "seed",
    "input_format",
    "prompt_field",
    "response_field",
    "system_prompt",
)


@dataclass
class AugmentResult:
    out: Path
    state_path: Path
    originals: int
    rows: int  # rows in `out` now
    added: int  # new rows this run
    requests: int  # teacher requests this run
    dropped: dict[str, int]  # over every run, by reason
    units: int
    units_done: int

    @property
    def complete(self) -> bool:
        return self.units_done >= self.units


@dataclass
class _State:
    options: dict[str, Any]
    next_unit: int = 0
    requests: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


class _Budget(Exception):
    """The request or time bound is reached; the current unit is redone on --resume."""


def state_path_for(out: str | Path) -> Path:
    return resumable.state_path_for(out, STATE_SUFFIX)


def augment(
    config: AugmentConfig, engine: Engine | None = None, embed: Embedder | None = None
) -> AugmentResult:
    """Write the originals and their augmented rows to `config.out`."""
    out, state_path = Path(config.out), state_path_for(config.out)
    _check(config, out, state_path)
    read = ReadOptions(**config.model_dump(include=set(ReadOptions.model_fields)))
    originals = read_examples(config.input, read)
    if not originals:
        raise InputError(f"{config.input}: no examples to augment")
    if tool_lines := [str(e.line) for e in originals if e.uses_tools][:5]:
        raise InputError(
            f"{config.input}: line {', '.join(tool_lines)}: rows with tools or tool calls are not "
            "augmented (a rewritten prompt would no longer match the recorded calls); split them "
            "into another file"
        )
    options = {name: getattr(config, name) for name in _IDENTITY}
    options["input_sha256"] = source_of(config.input).sha256
    state = _load_state(state_path, options) if config.resume else None
    if engine is None and any(s in TEACHER_STRATEGIES for s in config.strategy):
        from slmforge.runtime.specs import load_engine

        engine = load_engine(
            config.teacher or "",
            api_key_env=config.api_key_env,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
        )
    if not (config.resume and out.exists()):
        state = None
        written = originals if config.include_original else []
        write_examples(written, out, config.output_format, force=True)
    existing = _read_existing(out, skip=len(originals) if config.include_original else 0)
    state = state or _State(options)
    runner = _Runner(config, engine, embed, originals, existing, state, state_path)
    before = runner.rows
    runner.run()
    return AugmentResult(
        out=out,
        state_path=state_path,
        originals=len(originals),
        rows=runner.rows,
        added=runner.rows - before,
        requests=runner.requests,
        dropped=dict(state.dropped),
        units=len(runner.units),
        units_done=state.next_unit,
    )


def _check(config: AugmentConfig, out: Path, state_path: Path) -> None:
    """Fail before reading or asking anything when the options cannot work."""
    needs_teacher = [s for s in config.strategy if s in TEACHER_STRATEGIES]
    if needs_teacher and not config.teacher:
        raise ConfigError(
            f"--strategy {needs_teacher[0]} needs --teacher (openai:MODEL@BASE_URL, "
            "profile:NAME or a model folder)"
        )
    if len(set(config.strategy)) != len(config.strategy):
        raise ConfigError("--strategy: each strategy may be given once")
    if "multi_turn" in config.strategy and config.output_format == "prompt_response":
        raise ConfigError(
            "--strategy multi_turn writes conversations; use --output-format messages"
        )
    if Path(config.input).resolve() == out.resolve():
        raise ConfigError("--out must differ from the input file")
    check_resumable_output(config.resume, config.force, out, state_path)


# -- the unit loop -----------------------------------------------------------------------------
class _Runner:
    def __init__(
        self,
        config: AugmentConfig,
        engine: Engine | None,
        embed: Embedder | None,
        originals: list[Example],
        existing: list[Example],
        state: _State,
        state_path: Path,
    ) -> None:
        self.config, self.engine, self.state, self.state_path = config, engine, state, state_path
        self.originals = originals
        self.units = [(i, s) for i in range(len(originals)) for s in config.strategy]
        self.rows = (len(originals) if config.include_original else 0) + len(existing)
        self.requests = 0
        self.started = time.monotonic()
        self.seen = {e.prompt_key() for e in [*originals, *existing]}
        # units whose rows reached the file after the last state save still count as done
        self.written_units = {
            (e.meta["augmented_from"], e.meta["strategy"])
            for e in existing
            if e.meta and "augmented_from" in e.meta
        }
        self.near = NearDuplicates(config.near_duplicate, embed) if self._checks_near() else None
        if self.near is not None:
            self.near.add([e.prompt for e in originals] + [_novel_text(e) for e in existing])
        self.params = GenParams(max_tokens=config.max_tokens, temperature=config.temperature)

    def _checks_near(self) -> bool:
        teacher = any(s in TEACHER_STRATEGIES for s in self.config.strategy)
        return teacher and self.config.near_duplicate is not None

    def run(self) -> None:
        out = Path(self.config.out)
        with progress.task("Augmenting", total=len(self.units)) as bar:
            bar.update(completed=self.state.next_unit)
            try:
                while self.state.next_unit < len(self.units):
                    index, strategy = self.units[self.state.next_unit]
                    original = self.originals[index]
                    if (original.line, strategy) not in self.written_units:
                        self._write(self._accept(self._unit(original, strategy)))
                    self.state.next_unit += 1
                    _save_state(self.state_path, self.state)
                    bar.update(
                        completed=self.state.next_unit,
                        rows=self.rows,
                        dropped=sum(self.state.dropped.values()),
                        requests=self.state.requests,
                    )
            except _Budget as stop:
                _save_state(self.state_path, self.state)
                progress.warn(f"{stop}; {self.rows} rows are in {out}; run again with --resume")
            except KeyboardInterrupt:
                _save_state(self.state_path, self.state)
                raise Interrupted(
                    f"interrupted; {self.rows} rows are kept in {out}, run again with --resume "
                    "to continue"
                ) from None
            except RemoteError as err:
                _save_state(self.state_path, self.state)
                raise RemoteError(
                    f"{err}; {self.rows} rows are kept in {out}, run again with --resume to "
                    "continue",
                    err.status,
                ) from err

    def _unit(self, original: Example, strategy: str) -> list[Example]:
        if strategy == "noise":
            return self._noise(original)
        if not original.is_single_turn():
            self.state.dropped["multi_turn_original"] += 1
            return []
        return {
            "paraphrase": self._paraphrase,
            "back_translation": self._back_translation,
            "multi_turn": self._multi_turn,
        }[strategy](original)

    def _accept(self, candidates: list[Example]) -> list[Example]:
        accepted = []
        for candidate in candidates:
            key = candidate.prompt_key()
            if key in self.seen:
                self.state.dropped["duplicate"] += 1
                continue
            novel = _novel_text(candidate)
            checked = self.near is not None and candidate.meta["strategy"] != "noise"
            if checked and self.near.is_near(novel):
                self.state.dropped["near_duplicate"] += 1
                continue
            if self.near is not None:
                self.near.add([novel])
            self.seen.add(key)
            accepted.append(self._regenerated(candidate))
        return accepted

    def _regenerated(self, row: Example) -> Example:
        """With --regenerate-response, the teacher's answer to a kept row's new prompt (asked
        only after deduplication, so dropped rows cost no call)."""
        if not self.config.regenerate_response or row.meta["strategy"] == "noise":
            return row
        if row.meta["strategy"] == "multi_turn":
            return row  # its new turn was written with its answer
        context = [m for m in row.messages if m["role"] == "system"]
        answer = self._chat([*context, {"role": "user", "content": row.prompt}]).strip()
        messages = [*row.messages[:-1], {"role": "assistant", "content": answer}]
        return Example(messages, row.line, row.source, {**row.meta, "response": "regenerated"})

    def _write(self, rows: list[Example]) -> None:
        if not rows:
            return
        writer = WRITERS[self.config.output_format]
        text = "".join(json.dumps(writer(r, None), ensure_ascii=False) + "\n" for r in rows)
        with open(self.config.out, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        self.rows += len(rows)

    # -- strategies ------------------------------------------------------------------------
    def _noise(self, original: Example) -> list[Example]:
        """`copies` noisy variants; a draw that repeats a prompt already seen is redrawn (up
        to NOISE_ATTEMPTS times, each seeded), so short prompts still get distinct variants."""
        rows: list[Example] = []
        taken = set(self.seen)
        for copy in range(self.config.copies):
            for attempt in range(NOISE_ATTEMPTS):
                salt = f":{attempt}" if attempt else ""
                rng = random.Random(f"{self.config.seed}:{original.line}:{copy}{salt}")
                row = self._noisy_row(original, rng)
                if row.prompt_key() not in taken:
                    break
            taken.add(row.prompt_key())
            rows.append(row)
        return rows

    def _noisy_row(self, original: Example, rng: random.Random) -> Example:
        messages, edits = [], set()
        for message in original.messages:
            if message["role"] == "user":
                text, names = noisy(message["content"], rng, self.config.noise_level)
                message = {"role": "user", "content": text}
                edits.update(names)
            messages.append(dict(message))
        return _derived(original, messages, "noise", edits=sorted(edits))

    def _paraphrase(self, original: Example) -> list[Example]:
        n = self.config.copies
        reply = self._ask(
            "You rewrite user messages. Reply with a JSON array of strings only.",
            f"Write {n} different paraphrases of the user message below. Keep its meaning, "
            "language and every fact (names, numbers, places); vary the wording and sentence "
            f"structure. Reply with only a JSON array of {n} strings.\n\n"
            f"Message: {original.prompt}",
        )
        texts = parse_strings(reply)
        if not texts:
            self.state.dropped["unparsed_reply"] += 1
        return [self._with_prompt(original, text, "paraphrase") for text in texts[:n]]

    def _back_translation(self, original: Example) -> list[Example]:
        language = self.config.pivot_language
        rows = []
        for _ in range(self.config.copies):
            there = self._ask(
                "You are a translator. Reply with the translation only.",
                f"Translate into {language}:\n\n{original.prompt}",
            ).strip()
            back = self._ask(
                "You are a translator. Reply with the translation only.",
                f"Translate into English:\n\n{there}",
            ).strip()
            if not back or len(back) > MAX_TEXT_CHARS:
                self.state.dropped["unparsed_reply"] += 1
                continue
            rows.append(self._with_prompt(original, back, "back_translation", via=language))
        return rows

    def _multi_turn(self, original: Example) -> list[Example]:
        rows = []
        for _ in range(self.config.copies):
            reply = self._ask(
                "You write training conversations. Reply with one JSON object only.",
                "Here is a conversation between a user and an assistant:\n\n"
                f"User: {original.prompt}\nAssistant: {original.response}\n\n"
                "Write the user's natural follow-up question and the assistant's answer, in "
                'the same style. Reply with only {"user": "...", "assistant": "..."}.',
            )
            turn = parse_turn(reply)
            if turn is None:
                self.state.dropped["unparsed_reply"] += 1
                continue
            messages = [
                *original.messages,
                {"role": "user", "content": turn[0]},
                {"role": "assistant", "content": turn[1]},
            ]
            rows.append(_derived(original, messages, "multi_turn"))
        return rows

    def _with_prompt(self, original: Example, prompt: str, strategy: str, **meta: Any) -> Example:
        messages = [m for m in original.messages if m["role"] == "system"]
        messages += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": original.response},
        ]
        return _derived(original, messages, strategy, **meta)

    def _ask(self, system: str, user: str) -> str:
        return self._chat(
            [{"role": "system", "content": system}, {"role": "user", "content": user}]
        )

    def _chat(self, messages: list[Message]) -> str:
        config = self.config
        if config.max_requests is not None and self.state.requests >= config.max_requests:
            raise _Budget(f"stopped at --max-requests {config.max_requests}")
        elapsed = time.monotonic() - self.started
        if config.time_limit_s is not None and elapsed > config.time_limit_s:
            raise _Budget(f"stopped at --time-limit-s {config.time_limit_s:g}")
        assert self.engine is not None  # a teacher strategy always has one (checked up front)
        text = complete(self.engine, messages, self.params).text
        self.state.requests += 1
        self.requests += 1
        return text


def _derived(original: Example, messages: list[dict[str, str]], strategy: str, **meta: Any):
    origin = {"augmented_from": original.line, "strategy": strategy, "group": original.group_key()}
    return Example(messages, None, original.source, {**origin, **meta})


def _novel_text(example: Example) -> str:
    """What an augmented row adds: the follow-up of a multi-turn row, else its prompt."""
    if example.meta and example.meta.get("strategy") == "multi_turn":
        return [m["content"] for m in example.messages if m["role"] == "user"][-1]
    return example.prompt


# -- output and state --------------------------------------------------------------------------
def _read_existing(out: Path, skip: int) -> list[Example]:
    """The rows this run added to `out` (after the `skip` originals), once a last line cut off
    by a crash is repaired."""
    repair_last_line(out)
    if not out.read_bytes().strip():
        return []
    return read_examples(out)[skip:]


def _load_state(path: Path, options: dict[str, Any]) -> _State | None:
    def fields(data: dict[str, Any]) -> _State:
        next_unit, requests = int(data["next_unit"]), int(data["requests"])
        return _State(options, next_unit, requests, Counter(data["dropped"]))

    return load_state(path, options, "augment", fields)


def _save_state(path: Path, state: _State) -> None:
    save_state(
        path,
        {
            "options": state.options,
            "next_unit": state.next_unit,
            "requests": state.requests,
            "dropped": dict(state.dropped),
        },
    )
