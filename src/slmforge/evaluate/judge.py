"""LLM-as-judge evaluators: groundedness, relevance, coherence, fluency and similarity, 1-5.

Each evaluator is one prompt file in `slmforge/resources/judge/NAME.md` (YAML front matter with
its name, version and the inputs it needs, then `# system` and `# user` sections with
`{{question}}`, `{{answer}}`, `{{context}}`, `{{reference}}` placeholders), so adding one is one
new file and changing one means bumping its version. The judge is any Engine (a cloud GPT
deployment, a local model, our own server) and is asked for `{"score": 1-5, "reason": "..."}`.

A reply ends in exactly one state: `ok` (a score from 1 to 5 and a reason), `unparsed` (no JSON
object with a numeric score), `out_of_range` (a score outside 1-5), `error` (the judge failed
after its retries) or `not_applicable` (no context for groundedness, no reference for
similarity). Only `ok` replies count towards a mean: nothing else is ever turned into a score.

Replies are cached by (judge, prompt name, version and text, inputs) in a JSONL file, so a rerun
or a resumed run asks the judge nothing it has answered before. The raw reply is cached, not the
parsed one, so a fix to the parser applies to cached replies too.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from slmforge.errors import InputError, SlmforgeError
from slmforge.runtime.engine import Engine, GenParams, Message, complete

Status = Literal["ok", "unparsed", "out_of_range", "error", "not_applicable"]
INPUTS = ("question", "answer", "context", "reference")
OPTIONAL_INPUTS = ("context", "reference")
MIN_SCORE, MAX_SCORE = 1, 5
JUDGE_PARAMS = GenParams(max_tokens=300, temperature=0.0)
_SECTION = re.compile(r"^# (system|user)\s*$", re.MULTILINE)
_TRAILING_COMMA = re.compile(r",(\s*})")


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    version: int
    needs: tuple[str, ...]
    description: str
    system: str
    user: str

    @property
    def fingerprint(self) -> str:
        text = json.dumps([self.name, self.version, self.system, self.user])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def messages(self, inputs: dict[str, str | None]) -> list[Message]:
        user = self.user
        for name in INPUTS:
            user = user.replace("{{" + name + "}}", inputs.get(name) or "")
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def parse_prompt(text: str, source: str) -> JudgePrompt:
    """A prompt file: `---` YAML front matter `---`, then `# system` and `# user` sections."""
    parts = text.split("---", 2)
    if len(parts) != 3 or parts[0].strip():
        raise InputError(f"{source}: expected YAML front matter between '---' lines")
    meta = yaml.safe_load(parts[1]) or {}
    sections = _SECTION.split(parts[2])
    bodies = dict(zip(sections[1::2], (s.strip() for s in sections[2::2]), strict=True))
    unknown = set(meta.get("needs", [])) - set(INPUTS)
    if {"system", "user"} - set(bodies) or unknown or not isinstance(meta.get("version"), int):
        raise InputError(
            f"{source}: needs 'name', an integer 'version', 'needs' from {', '.join(INPUTS)} "
            "and '# system' and '# user' sections"
        )
    return JudgePrompt(
        name=str(meta["name"]),
        version=meta["version"],
        needs=tuple(meta.get("needs", [])),
        description=str(meta.get("description", "")),
        system=bodies["system"],
        user=bodies["user"],
    )


@cache
def judge_prompts() -> dict[str, JudgePrompt]:
    """Every evaluator shipped in `slmforge/resources/judge`, by name."""
    folder = resources.files("slmforge") / "resources" / "judge"
    prompts = {}
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".md"):
            prompt = parse_prompt(item.read_text(encoding="utf-8"), item.name)
            prompts[prompt.name] = prompt
    return prompts


def resolve(names: list[str]) -> list[JudgePrompt]:
    known = judge_prompts()
    chosen: list[JudgePrompt] = []
    for name in names:
        if name not in known:
            raise InputError(
                f"--judge-metrics: unknown evaluator {name!r} (known: {', '.join(known)})"
            )
        if known[name] not in chosen:
            chosen.append(known[name])
    return chosen


@dataclass
class Judgement:
    status: Status
    score: float | None = None
    reason: str = ""
    raw: str | None = None  # the judge's reply when it could not be used, to see why

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _json_objects(text: str):
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        for candidate in (text[start:], _TRAILING_COMMA.sub(r"\1", text[start:])):
            try:
                value, _ = decoder.raw_decode(candidate)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                yield value
                break


def parse_judgement(text: str) -> Judgement:
    """The first JSON object in `text` that has a score (code fences and prose around it are
    fine); anything else is `unparsed`, a score outside 1-5 is `out_of_range`."""
    for obj in _json_objects(text):
        fields = {str(k).lower(): v for k, v in obj.items()}
        if "score" not in fields and "rating" not in fields:
            continue
        value = fields.get("score", fields.get("rating"))
        reason = fields.get("reason", fields.get("explanation", ""))
        reason = reason if isinstance(reason, str) else json.dumps(reason)
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", value):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return Judgement("unparsed", reason=reason, raw=text)
        if not MIN_SCORE <= value <= MAX_SCORE:
            return Judgement("out_of_range", reason=f"score {value:g} is outside 1-5", raw=text)
        return Judgement("ok", float(value), reason)
    return Judgement("unparsed", reason="no JSON object with a score in the reply", raw=text)


class JudgeCache:
    """Raw judge replies by key, in memory and appended to a JSONL file (thread-safe)."""

    def __init__(self, path: Path | None, seed_from: list[Path] | None = None) -> None:
        self.path = path
        self.replies: dict[str, str] = {}
        self.hits = 0
        self._lock = threading.Lock()
        for source in [*(seed_from or []), *([path] if path else [])]:
            self._load(source)

    def _load(self, path: Path) -> None:
        if not path.is_file():
            return
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                item = json.loads(line)
                self.replies[item["key"]] = item["reply"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut off by a crash: that reply is asked again

    def get(self, key: str) -> str | None:
        with self._lock:
            reply = self.replies.get(key)
            self.hits += reply is not None
            return reply

    def put(self, key: str, reply: str) -> None:
        with self._lock:
            self.replies[key] = reply
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps({"key": key, "reply": reply}) + "\n")

    def dump(self, path: Path) -> None:
        with self._lock:
            lines = [json.dumps({"key": k, "reply": v}) for k, v in self.replies.items()]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


class Judge:
    """Runs the evaluators with one judge engine, through the cache."""

    def __init__(self, engine: Engine, spec: str, cache: JudgeCache) -> None:
        self.engine = engine
        self.spec = spec
        self.cache = cache
        self.calls = 0

    def key(self, prompt: JudgePrompt, inputs: dict[str, str | None]) -> str:
        wanted = {name: inputs.get(name) for name in prompt.needs}
        text = json.dumps([self.spec, prompt.fingerprint, wanted], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def evaluate(self, prompt: JudgePrompt, inputs: dict[str, str | None]) -> Judgement:
        # context and reference are optional per row; an empty answer is still judged
        missing = [n for n in prompt.needs if n in OPTIONAL_INPUTS and not inputs.get(n)]
        if missing:
            return Judgement("not_applicable", reason=f"no {' or '.join(missing)} for this row")
        key = self.key(prompt, inputs)
        reply = self.cache.get(key)
        if reply is None:
            self.calls += 1
            try:
                reply = complete(self.engine, prompt.messages(inputs), JUDGE_PARAMS).text
            except SlmforgeError as err:
                return Judgement("error", reason=str(err))
            self.cache.put(key, reply)
        return parse_judgement(reply)
