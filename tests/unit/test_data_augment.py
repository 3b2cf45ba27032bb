"""`data augment`: noise is seeded and touches only prompts, every row records its origin,
teacher replies are parsed and deduplicated, a bounded run resumes without repeating work,
and `data split` keeps an original with its variants. The teacher here is an in-process
scripted engine; tests/integration/test_augment_teacher.py uses a real HTTP endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_helpers import write_jsonl
from slmforge.config.data import AugmentConfig, ConvertConfig
from slmforge.data.augment import augment, state_path_for
from slmforge.data.formats import Example, read_examples
from slmforge.data.replies import parse_strings, parse_turn
from slmforge.data.split import split_examples
from slmforge.data.writing import run_convert
from slmforge.errors import ConfigError, DataError, OutputExistsError
from slmforge.runtime.engine import Delta

ROWS = [
    {"prompt": "What is the best time to visit Kyoto?", "response": "Late March or November."},
    {"prompt": "How do I get around Amsterdam, please?", "response": "Rent a bike."},
    {"prompt": "What should I eat in Porto?", "response": "Try a francesinha."},
    {"prompt": "Is Rome walkable with kids?", "response": "Yes, the centre is compact."},
]


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", ROWS)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _noise(data: Path, out: Path, **options) -> list[dict]:
    augment(AugmentConfig(input=data, out=out, copies=2, **options))
    return _lines(out)


def test_noise_is_deterministic_keeps_responses_and_records_origin(data, tmp_path):
    first = _noise(data, tmp_path / "a.jsonl", seed=7)
    again = _noise(data, tmp_path / "b.jsonl", seed=7)
    other = _noise(data, tmp_path / "c.jsonl", seed=8)
    assert first == again
    assert first != other
    originals, added = first[: len(ROWS)], first[len(ROWS) :]
    assert [r["messages"][0]["content"] for r in originals] == [r["prompt"] for r in ROWS]
    assert len(added) == 2 * len(ROWS)
    for row in added:
        meta = row["meta"]
        source = ROWS[meta["augmented_from"] - 1]
        assert meta["strategy"] == "noise" and meta["edits"]
        assert meta["group"] == " ".join(source["prompt"].casefold().split())
        assert row["messages"][1] == {"role": "assistant", "content": source["response"]}
        assert row["messages"][0]["content"] != source["prompt"]


def test_meta_round_trips_through_convert_and_split_keeps_groups(data, tmp_path):
    out = tmp_path / "aug.jsonl"
    augment(AugmentConfig(input=data, out=out, copies=3))
    converted = tmp_path / "pr.jsonl"
    run_convert(ConvertConfig(input=out, out=converted, output_format="prompt_response"))
    examples = read_examples(converted)
    assert [e.meta for e in examples] == [e.meta for e in read_examples(out)]
    for seed in range(5):
        parts = split_examples(examples, validation=0.25, seed=seed)
        where = {e.group_key(): name for name, part in parts.items() for e in part}
        for name, part in parts.items():
            assert all(where[e.group_key()] == name for e in part)


def test_bad_meta_and_option_errors(data, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b", "meta": 3}])
    with pytest.raises(DataError, match=r"bad.jsonl:1 \[meta\]: expected an object, got int"):
        read_examples(bad)
    with pytest.raises(ConfigError, match="--strategy paraphrase needs --teacher"):
        augment(AugmentConfig(input=data, out=tmp_path / "o.jsonl", strategy=["paraphrase"]))
    out = tmp_path / "o.jsonl"
    out.write_text("keep me\n")
    with pytest.raises(OutputExistsError, match=r"pass --resume .* or --force"):
        augment(AugmentConfig(input=data, out=out))
    assert out.read_text() == "keep me\n"
    with pytest.raises(ValueError, match="strategy"):
        AugmentConfig(input=data, out=out, strategy=["shuffle"])


TOPICS = ["hotels", "weather", "museums", "trains", "beaches", "markets", "tickets", "wine"]


class Teacher:
    """Paraphrases as a JSON array (one of them a copy of an original prompt) and follow-ups."""

    name = "teacher"

    def __init__(self) -> None:
        self.requests: list[str] = []

    def chat(self, messages, params, adapter=None):
        user = messages[-1]["content"]
        self.requests.append(user)
        if "follow-up" in user:
            topic = TOPICS[len(self.requests) % len(TOPICS)]
            text = json.dumps({"user": f"And what about {topic}?", "assistant": "Ask locally."})
        else:
            prompt = user.rsplit("Message: ", 1)[-1]
            text = "```json\n" + json.dumps([f"Tell me: {prompt}", ROWS[2]["prompt"]]) + "\n```"
        yield Delta(text=text)
        yield Delta(finish_reason="stop")

    def adapters(self):
        return []


def _embed(texts):
    """A bag-of-letters embedding: enough to test the near-duplicate rule without a model."""
    vectors = np.zeros((len(texts), 26), dtype=np.float32)
    for row, text in enumerate(texts):
        for char in text.lower():
            if "a" <= char <= "z":
                vectors[row, ord(char) - 97] += 1
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_teacher_rows_dedupe_and_bounded_run_resumes(data, tmp_path):
    out = tmp_path / "aug.jsonl"
    options = dict(
        input=data,
        out=out,
        strategy=["paraphrase", "multi_turn"],
        copies=2,
        teacher="openai:t@http://127.0.0.1:9/v1",
        near_duplicate=0.999,
    )
    teacher = Teacher()
    first = augment(AugmentConfig(**options, max_requests=3), engine=teacher, embed=_embed)
    assert not first.complete and first.requests == 3
    resumed = augment(AugmentConfig(**options, resume=True), engine=teacher, embed=_embed)
    assert resumed.complete
    # 4 originals x (1 paraphrase request + 2 multi_turn requests), none asked twice
    assert len(teacher.requests) == 12
    rows = _lines(out)[len(ROWS) :]
    units = [(r["meta"]["augmented_from"], r["meta"]["strategy"]) for r in rows]
    assert len(set(units)) == len(ROWS) * 2
    paraphrases = [r for r in rows if r["meta"]["strategy"] == "paraphrase"]
    assert [r["messages"][0]["content"] for r in paraphrases[:1]] == [
        f"Tell me: {ROWS[0]['prompt']}"
    ]
    assert resumed.dropped["duplicate"] == len(ROWS)  # the copy of ROWS[2]'s prompt, each time
    turns = [r for r in rows if r["meta"]["strategy"] == "multi_turn"]
    assert all(len(r["messages"]) == 4 and r["messages"][1]["content"] for r in turns)
    state = json.loads(state_path_for(out).read_text())
    assert state["next_unit"] == len(ROWS) * 2 and state["requests"] == 12


def test_parsers_are_lenient():
    assert parse_strings('Sure!\n["a", "b",]') == ["a", "b"]
    assert parse_strings("1. first\n2) second") == ["first", "second"]
    assert parse_strings('[{"text": "x"}, 3, ""]') == ["x"]
    assert parse_turn('```\n{"user": "u", "assistant": "a"}\n```') == ("u", "a")
    assert parse_turn('{"user": "u"}') is None


def test_group_key_defaults_to_prompt():
    plain = Example(
        [{"role": "user", "content": "Hi  There"}, {"role": "assistant", "content": "x"}]
    )
    assert plain.group_key() == "hi there"
    variant = Example(plain.messages, meta={"group": "origin"})
    assert variant.group_key() == "origin"


def test_noise_edits_only_user_turns_of_conversations(tmp_path):
    turns = [
        {"role": "system", "content": "You are a travel assistant."},
        {"role": "user", "content": "Thank you, what is the weather like in Oslo?"},
        {"role": "assistant", "content": "Cool, bring layers."},
        {"role": "user", "content": "And do you recommend a museum pass?"},
        {"role": "assistant", "content": "Yes, the Oslo Pass."},
    ]
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": turns}])
    rows = _noise(data, tmp_path / "out.jsonl", seed=3)[1:]
    assert len(rows) == 2
    for row in rows:
        got = row["messages"]
        assert [m["role"] for m in got] == [m["role"] for m in turns]
        assert [m for m in got if m["role"] != "user"] == [m for m in turns if m["role"] != "user"]
        assert set(row["meta"]["edits"]) <= {"abbreviations", "typos", "punctuation", "casing"}
