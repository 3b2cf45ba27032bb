"""`slmforge data synth`: new prompt/response examples from a teacher model shown seed examples.

Each request shows the teacher `seed_examples` seed pairs (picked with a RNG seeded by the
run seed and the request index, so a resumed run asks exactly what the first run would have)
and asks for `per_request` new pairs as a JSON array. Replies are parsed leniently (code
fences, text around the JSON, an object wrapping the list, trailing commas, a reply cut off by
max_tokens) and every item is validated; malformed items and duplicates (of a seed or of a row
already written) are dropped and counted by reason.

Crash safety: each accepted row is appended to `out` and fsynced at once, and the sidecar
`<out>.synth.json` (written atomically after every request) records the options, the request
index and the drop counts. `--resume` re-reads the rows (repairing a last line cut off by a
crash), checks the options match, and continues without duplicating a row.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmforge import progress
from slmforge.artifacts import source_of
from slmforge.config.data import SynthConfig
from slmforge.data import resumable
from slmforge.data.resumable import (
    check_resumable_output,
    load_state,
    repair_last_line,
    save_state,
)
from slmforge.errors import ConfigError, InputError, Interrupted, RemoteError
from slmforge.runtime.engine import Engine, GenParams, Message, complete

STATE_SUFFIX = ".synth.json"
MAX_PROMPT_CHARS = 4000
MAX_RESPONSE_CHARS = 8000
# options that decide what the data set is; a resumed run must use the same ones
_IDENTITY_OPTIONS = (
    "teacher",
    "topic",
    "per_request",
    "seed_examples",
    "temperature",
    "max_tokens",
    "seed",
)
_TRAILING_COMMA = re.compile(r",(\s*[\]}])")
_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)```", re.DOTALL)

SYSTEM_PROMPT = (
    "You write training data for fine-tuning a small language model. "
    "You reply with a JSON array only, no other text."
)

Pair = tuple[str, str]


@dataclass
class SynthResult:
    out: Path
    state_path: Path
    rows: int  # rows in `out` now
    added: int  # rows this run added
    requests: int  # requests this run made
    total_requests: int  # requests over every run on this output
    dropped: dict[str, int]  # dropped items by reason, over every run
    count: int  # rows asked for
    complete: bool  # rows == count


@dataclass
class _State:
    options: dict[str, Any]
    requests: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


def state_path_for(out: str | Path) -> Path:
    return resumable.state_path_for(out, STATE_SUFFIX)


def synthesize(config: SynthConfig, engine: Engine | None = None) -> SynthResult:
    """Write `config.count` new unique prompt/response rows to `config.out`."""
    if config.pairs or config.seed_data is None:
        raise ConfigError("synthesize writes examples from seed data; pairs: synthesize_pairs")
    out, state_path = Path(config.out), state_path_for(config.out)
    check_resumable_output(config.resume, config.force, out, state_path)
    seeds = load_seed_pairs(config.seed_data)
    options = _identity(config, config.seed_data)
    state = _load_state(state_path, options) if config.resume else None
    if engine is None:
        from slmforge.runtime.specs import load_engine

        engine = load_engine(
            config.teacher,
            api_key_env=config.api_key_env,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
        )
    if config.force:
        out.unlink(missing_ok=True)
        state_path.unlink(missing_ok=True)
    existing = read_rows(out, repair=True) if config.resume else []
    if config.resume and existing and state is None:
        progress.warn(f"{state_path} is missing; resuming from the {len(existing)} rows in {out}")
    state = state or _State(options)
    writer = _RowWriter(out, existing, seeds)
    added_before = writer.rows
    made = _run(engine, config, seeds, writer, state, state_path)
    return SynthResult(
        out=out,
        state_path=state_path,
        rows=writer.rows,
        added=writer.rows - added_before,
        requests=made,
        total_requests=state.requests,
        dropped=dict(state.dropped),
        count=config.count,
        complete=writer.rows >= config.count,
    )


# -- the request loop --------------------------------------------------------------------------
def _run(
    engine: Engine,
    config: SynthConfig,
    seeds: list[Pair],
    writer: _RowWriter,
    state: _State,
    state_path: Path,
) -> int:
    remaining = max(config.count - writer.rows, 0)
    max_requests = config.max_requests or 3 * math.ceil(remaining / config.per_request) + 5
    params = GenParams(max_tokens=config.max_tokens, temperature=config.temperature)
    made = 0
    with progress.task("Synthesizing examples", total=config.count) as bar:
        bar.update(completed=writer.rows, accepted=writer.rows, dropped=sum(state.dropped.values()))
        try:
            while writer.rows < config.count and made < max_requests:
                shown = pick_seeds(seeds, config.seed_examples, config.seed, state.requests)
                messages = build_messages(shown, config.topic, config.per_request)
                reply = complete(engine, messages, params).text
                state.requests += 1
                made += 1
                state.dropped.update(_accept(reply, writer, config.count))
                _save_state(state_path, state, writer.rows, config.count)
                bar.update(
                    completed=writer.rows,
                    accepted=writer.rows,
                    dropped=sum(state.dropped.values()),
                    requests=state.requests,
                )
        except KeyboardInterrupt:
            _save_state(state_path, state, writer.rows, config.count)
            raise Interrupted(
                f"interrupted; {writer.rows} rows are kept in {writer.out}, "
                "run again with --resume to continue"
            ) from None
        except RemoteError as err:
            if not writer.rows:
                raise
            raise RemoteError(
                f"{err}; {writer.rows} rows are kept in {writer.out}, "
                "run again with --resume to continue",
                err.status,
            ) from err
        finally:
            writer.close()
    if writer.rows < config.count:
        progress.warn(
            f"stopped after {made} requests with {writer.rows}/{config.count} rows; "
            "raise --max-requests or run again with --resume"
        )
    return made


def _accept(reply: str, writer: _RowWriter, count: int) -> Counter[str]:
    """Write the valid new pairs of one reply (up to `count` rows in all); return the drops."""
    pairs, drops = parse_pairs(reply)
    for prompt, response in pairs:
        if writer.rows >= count:
            break
        reason = writer.offer(prompt, response)
        if reason:
            drops[reason] += 1
    return drops


def pick_seeds(seeds: list[Pair], k: int, seed: int, request_index: int) -> list[Pair]:
    """The seed pairs shown in request `request_index`; the same on every run and resume."""
    rng = random.Random(f"{seed}:{request_index}")
    return rng.sample(seeds, min(k, len(seeds)))


def build_messages(shown: list[Pair], topic: str, n: int) -> list[Message]:
    examples = json.dumps(
        [{"prompt": p, "response": r} for p, r in shown], indent=2, ensure_ascii=False
    )
    about = f" about {topic}" if topic else ""
    user = (
        f"Here are examples of prompt/response pairs:\n\n{examples}\n\n"
        f"Write {n} NEW pairs{about} in the same style, tone and length. Do not repeat or "
        "rephrase the examples, and make every prompt different.\n"
        'Reply with only a JSON array of objects with the keys "prompt" and "response".'
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# -- parsing teacher replies -------------------------------------------------------------------
def parse_pairs(text: str) -> tuple[list[Pair], Counter[str]]:
    """The valid pairs in a teacher reply, and the drops by reason."""
    drops: Counter[str] = Counter()
    items, complete_json = _json_items(text)
    if items is None:
        drops["not_json"] += 1
        return [], drops
    if not complete_json:
        drops["truncated"] += 1
    if not items:
        drops["no_items"] += 1
    pairs = []
    for item in items:
        checked = _check_item(item)
        if isinstance(checked, str):
            drops[checked] += 1
        else:
            pairs.append(checked)
    return pairs, drops


def _check_item(item: Any) -> Pair | str:
    """The pair, or the reason it is dropped."""
    if not isinstance(item, dict):
        return "not_object"
    prompt, response = item.get("prompt"), item.get("response")
    if prompt is None or response is None:
        return "missing_field"
    if not isinstance(prompt, str) or not isinstance(response, str):
        return "wrong_type"
    prompt, response = prompt.strip(), response.strip()
    if not prompt or not response:
        return "empty_field"
    if len(prompt) > MAX_PROMPT_CHARS or len(response) > MAX_RESPONSE_CHARS:
        return "too_long"
    return prompt, response


def _json_items(text: str) -> tuple[list[Any] | None, bool]:
    """The items of the JSON list in `text` and whether it was complete, or (None, False)."""
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    best: tuple[list[Any] | None, bool] = (None, False)
    # trailing commas are invalid JSON but common in model output; try without them second
    for candidate in (body, _TRAILING_COMMA.sub(r"\1", body)):
        items, done = _decode_items(candidate)
        if items is not None and done:
            return items, True
        if items is not None and (best[0] is None or len(items) > len(best[0])):
            best = (items, done)
    return best


def _decode_items(text: str) -> tuple[list[Any] | None, bool]:
    # an array of objects first: "[1]" or "[]" in text before the JSON is not the answer
    array = re.search(r"\[\s*\{", text) or re.search(r"\[\s*\]", text)
    if array:
        return _decode_array(text, array.start())
    start = text.find("{")
    if start < 0:
        return None, False
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError:
        return None, False
    if "prompt" in value or "response" in value:
        return [value], True
    lists = [v for v in value.values() if isinstance(v, list)]
    return (lists[0], True) if lists else (None, False)


def _decode_array(text: str, start: int) -> tuple[list[Any], bool]:
    """Decode array items one by one, so a reply cut off mid-item keeps its whole items."""
    decoder = json.JSONDecoder()
    items: list[Any] = []
    pos = start + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            return items, False
        if text[pos] == "]":
            return items, True
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return items, False
        items.append(value)


def normalize(text: str) -> str:
    """The dedupe key of a prompt: lowercase words, punctuation and spacing ignored."""
    return " ".join(re.findall(r"\w+", text.lower()))


# -- seeds, rows and state ---------------------------------------------------------------------
def load_seed_pairs(path: Path) -> list[Pair]:
    """(prompt, response) of each seed example: its first user and last assistant message."""
    from slmforge.data.formats import read_examples

    examples = read_examples(path)
    pairs = [(ex.prompt, ex.response) for ex in examples if ex.prompt and ex.response]
    if not pairs:
        raise InputError(f"{path}: no seed examples with a user prompt and an assistant response")
    return pairs


class _RowWriter:
    """Appends unique rows to `out`, each flushed and fsynced so a crash keeps it."""

    def __init__(self, out: Path, existing: list[Pair], seeds: list[Pair]) -> None:
        self.out = out
        self.rows = len(existing)
        self.seed_keys = {normalize(p) for p, _ in seeds}
        self.seen = {normalize(p) for p, _ in existing}
        self._handle: Any = None

    def offer(self, prompt: str, response: str) -> str | None:
        """Write the pair unless it is a duplicate; return the drop reason if it is."""
        key = normalize(prompt)
        if key in self.seed_keys:
            return "duplicate_seed"
        if key in self.seen:
            return "duplicate"
        if self._handle is None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.out, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        line = json.dumps({"prompt": prompt, "response": response}, ensure_ascii=False)
        self._handle.write(line + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.seen.add(key)
        self.rows += 1
        return None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_rows(out: Path, repair: bool = False) -> list[Pair]:
    """The prompt/response rows of `out`; with `repair`, its last line is repaired first
    (`resumable.repair_last_line`)."""
    if not out.exists():
        return []
    if repair:
        repair_last_line(out)
    data = out.read_bytes()
    rows = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        checked = _parse_row(line)
        if checked is None:
            raise InputError(
                f"{out}:{number}: not a prompt/response JSON row; fix or remove "
                "the line, or pass --force to start over"
            )
        rows.append(checked)
    return rows


def _parse_row(line: str | bytes) -> Pair | None:
    try:
        checked = _check_item(json.loads(line))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return None if isinstance(checked, str) else checked


def _identity(config: SynthConfig, seed_data: Path) -> dict[str, Any]:
    options = {name: getattr(config, name) for name in _IDENTITY_OPTIONS}
    options["seed_data_sha256"] = source_of(seed_data).sha256
    return options


def _load_state(path: Path, options: dict[str, Any]) -> _State | None:
    def fields(data: dict[str, Any]) -> _State:
        return _State(options, int(data["requests"]), Counter(data["dropped"]))

    return load_state(path, options, "synth", fields)


def _save_state(path: Path, state: _State, rows: int, count: int) -> None:
    save_state(
        path,
        {
            "options": state.options,
            "requests": state.requests,
            "rows": rows,
            "count": count,
            "dropped": dict(state.dropped),
        },
    )
