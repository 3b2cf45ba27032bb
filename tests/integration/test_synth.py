"""`slmforge data synth` against the fake OpenAI-compatible server standing in for a teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fake_openai import FakeOpenAI, Reply
from slmforge.config.data import SynthConfig
from slmforge.data.synth import (
    build_messages,
    parse_pairs,
    pick_seeds,
    state_path_for,
    synthesize,
)
from slmforge.errors import ConfigError, Interrupted, OutputExistsError
from slmforge.runtime.specs import load_engine

SEEDS = [
    ("How do I get from Lisbon airport to the city?", "Take the metro red line to Saldanha."),
    ("What should I eat in Porto?", "Try a francesinha, a hearty sandwich with a beer sauce."),
    ("When is the best time to visit Kyoto?", "Late March for cherry blossoms or November."),
    ("Is Rome walkable?", "Yes, the historic centre is compact; wear comfortable shoes."),
    ("What do I pack for Iceland in June?", "Layers, a waterproof jacket and an eye mask."),
    ("How do I get around Amsterdam?", "Rent a bike or use the trams; cars are slow there."),
]


class Teacher:
    """A responder that answers every request with `per_request` new numbered pairs."""

    def __init__(self, per_request: int = 5) -> None:
        self.per_request = per_request
        self.made = 0

    def pairs(self, k: int) -> list[dict[str, str]]:
        start, self.made = self.made, self.made + k
        return [
            {"prompt": f"What is travel tip number {i}?", "response": f"Tip {i}: go early."}
            for i in range(start, start + k)
        ]

    def __call__(self, body: dict) -> str:
        return json.dumps(self.pairs(self.per_request))


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(fake):
    fake.reset()
    yield


@pytest.fixture
def seeds(tmp_path: Path) -> Path:
    path = tmp_path / "seeds.jsonl"
    lines = [json.dumps({"prompt": p, "response": r}) for p, r in SEEDS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_config(fake: FakeOpenAI, seeds: Path, out: Path, **options) -> SynthConfig:
    values = {
        "seed_data": seeds,
        "out": out,
        "teacher": f"openai:teacher@{fake.base_url}",
        "topic": "rail travel",
        "count": 12,
        "per_request": 5,
        "seed_examples": 3,
        "max_retries": 2,
        **options,
    }
    return SynthConfig(**values)


def read_out(path: Path) -> list[dict[str, str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(set(r) == {"prompt", "response"} and r["prompt"] and r["response"] for r in rows)
    return rows


def assert_unique(rows: list[dict[str, str]]) -> None:
    prompts = [r["prompt"] for r in rows]
    assert len(set(prompts)) == len(prompts)
    assert not set(prompts) & {p for p, _ in SEEDS}


# -- parsing teacher replies (pure) ----------------------------------------------------------
@pytest.mark.parametrize(
    "reply",
    [
        '[{"prompt": "a?", "response": "b."}]',
        'Sure! Here you go:\n```json\n[{"prompt": "a?", "response": "b."}]\n```\nEnjoy.',
        '```\n[{"prompt": "a?", "response": "b.",},]\n```',
        '{"examples": [{"prompt": "a?", "response": "b."}]}',
        '{"prompt": "a?", "response": "b."}',
        'Here are [1] examples: [ {"prompt": "a?", "response": "b."} ]',
    ],
)
def test_parse_pairs_finds_the_json(reply: str) -> None:
    pairs, drops = parse_pairs(reply)
    assert pairs == [("a?", "b.")]
    assert not drops


def test_parse_pairs_counts_what_it_drops() -> None:
    reply = json.dumps(
        [
            {"prompt": "ok?", "response": "fine."},
            {"question": "wrong keys", "answer": "x"},
            {"prompt": "  ", "response": "empty prompt"},
            {"prompt": "number", "response": 3},
            "just a string",
            {"prompt": "long?", "response": "x" * 100_000},
        ]
    )
    pairs, drops = parse_pairs(reply)
    assert pairs == [("ok?", "fine.")]
    assert drops == {
        "missing_field": 1,
        "empty_field": 1,
        "wrong_type": 1,
        "not_object": 1,
        "too_long": 1,
    }
    assert parse_pairs("I cannot help with that.") == ([], {"not_json": 1})


def test_parse_pairs_keeps_whole_items_of_a_cut_off_reply() -> None:
    pairs, drops = parse_pairs('[{"prompt": "a?", "response": "b."}, {"prompt": "c?", "resp')
    assert pairs == [("a?", "b.")]
    assert drops == {"truncated": 1}


_words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)


@given(
    pairs=st.lists(st.tuples(_words, _words), max_size=5),
    before=st.text(alphabet="abc ,.:!\n", max_size=30),
    after=st.text(max_size=30),
)
def test_parse_pairs_recovers_any_valid_array_inside_prose(pairs, before, after) -> None:
    items = [{"prompt": p, "response": r} for p, r in pairs]
    parsed, _ = parse_pairs(before + json.dumps(items, ensure_ascii=False) + after)
    expected = [(p.strip(), r.strip()) for p, r in pairs if p.strip() and r.strip()]
    assert parsed == expected


@given(st.text(max_size=200))
def test_parse_pairs_never_raises(text: str) -> None:
    pairs, drops = parse_pairs(text)
    assert all(p and r for p, r in pairs)
    assert all(v > 0 for v in drops.values())


def test_seed_picks_depend_only_on_seed_and_request_index() -> None:
    assert pick_seeds(SEEDS, 3, 0, 4) == pick_seeds(SEEDS, 3, 0, 4)
    assert len({tuple(pick_seeds(SEEDS, 3, 0, i)) for i in range(10)}) > 1
    messages = build_messages(SEEDS[:2], "rail travel", 5)
    assert "Write 5 NEW pairs about rail travel" in messages[-1]["content"]
    assert SEEDS[0][0] in messages[-1]["content"]


# -- against the fake teacher ----------------------------------------------------------------
@pytest.mark.integration
def test_happy_path_writes_exactly_count_unique_rows(fake, seeds, tmp_path) -> None:
    fake.responder = Teacher()
    out = tmp_path / "synth.jsonl"
    result = synthesize(make_config(fake, seeds, out, temperature=0.3, max_tokens=500))
    rows = read_out(out)
    assert len(rows) == 12 and result.rows == 12 and result.added == 12 and result.complete
    assert_unique(rows)
    assert result.requests == 3 and result.dropped == {}
    state = json.loads(state_path_for(out).read_text())
    assert state["requests"] == 3 and state["rows"] == 12
    body = fake.chat_requests()[0].body
    assert (body["temperature"], body["max_tokens"]) == (0.3, 500)
    shown = sum(p in body["messages"][-1]["content"] for p, _ in SEEDS)
    assert shown == 3


@pytest.mark.integration
def test_malformed_replies_are_dropped_and_counted(fake, seeds, tmp_path) -> None:
    teacher = Teacher()
    fake.script(
        "Sorry, I can't produce JSON today.",
        json.dumps([{"question": "q", "answer": "a"}, {"prompt": "", "response": "r"}]),
        "Here they are:\n```json\n" + json.dumps(teacher.pairs(2)) + "\n```",
        json.dumps([{"prompt": SEEDS[0][0].upper(), "response": "copied"}, *teacher.pairs(1)]),
        json.dumps(
            [*teacher.pairs(0), {"prompt": "What is travel tip number 0 ?", "response": "again"}]
        ),
    )
    fake.responder = teacher
    out = tmp_path / "synth.jsonl"
    result = synthesize(make_config(fake, seeds, out, count=6))
    rows = read_out(out)
    assert len(rows) == 6
    assert_unique(rows)
    assert result.dropped == {
        "not_json": 1,
        "missing_field": 1,
        "empty_field": 1,
        "duplicate_seed": 1,
        "duplicate": 1,
    }


@pytest.mark.integration
def test_429_is_retried_by_the_engine(fake, seeds, tmp_path) -> None:
    fake.script(Reply.failure(429, retry_after=0), Reply.failure(503, retry_after=0))
    fake.responder = Teacher()
    out = tmp_path / "synth.jsonl"
    result = synthesize(make_config(fake, seeds, out, count=5))
    assert len(read_out(out)) == 5 and result.requests == 1
    assert len(fake.chat_requests()) == 3


@pytest.mark.integration
def test_resume_after_max_requests_finishes_without_duplicates(fake, seeds, tmp_path) -> None:
    fake.responder = Teacher(per_request=2)
    out = tmp_path / "synth.jsonl"
    first = synthesize(make_config(fake, seeds, out, count=10, per_request=2, max_requests=2))
    assert first.rows == 4 and not first.complete
    second = synthesize(make_config(fake, seeds, out, count=10, per_request=2, resume=True))
    rows = read_out(out)
    assert len(rows) == 10 and second.rows == 10 and second.added == 6 and second.complete
    assert_unique(rows)
    assert second.total_requests == 5 and second.requests == 3
    # the resumed run showed the seeds the first run would have shown for request 2
    expected = pick_seeds(SEEDS, 3, 0, 2)
    shown = fake.chat_requests()[2].body["messages"][-1]["content"]
    assert all(p in shown for p, _ in expected)


class InterruptAfter:
    """Wraps an engine and raises KeyboardInterrupt (Ctrl-C) on its call number `n`."""

    def __init__(self, engine, n: int) -> None:
        self.engine, self.n, self.calls, self.name = engine, n, 0, engine.name

    def chat(self, messages, params, adapter=None):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.engine.chat(messages, params, adapter)

    def adapters(self) -> list[str]:
        return []


@pytest.mark.integration
def test_interrupted_run_keeps_rows_and_resumes(fake, seeds, tmp_path) -> None:
    fake.responder = Teacher()
    out = tmp_path / "synth.jsonl"
    config = make_config(fake, seeds, out)
    engine = InterruptAfter(load_engine(config.teacher), n=2)
    with pytest.raises(Interrupted, match="--resume"):
        synthesize(config, engine)
    assert len(read_out(out)) == 5
    assert json.loads(state_path_for(out).read_text())["requests"] == 1
    result = synthesize(config.model_copy(update={"resume": True}))
    rows = read_out(out)
    assert len(rows) == 12 and result.added == 7
    assert_unique(rows)


@pytest.mark.integration
@pytest.mark.parametrize("tail", ['{"prompt": "What is travel tip nu', ""])
def test_truncated_last_line_is_repaired_on_resume(fake, seeds, tmp_path, tail) -> None:
    fake.responder = Teacher()
    out = tmp_path / "synth.jsonl"
    synthesize(make_config(fake, seeds, out, count=5))
    text = out.read_text()
    # a crash mid-write: either half a row, or a whole row without its newline
    out.write_text(text + tail if tail else text.rstrip("\n"), encoding="utf-8")
    result = synthesize(make_config(fake, seeds, out, count=8, resume=True))
    rows = read_out(out)
    assert len(rows) == 8 and result.rows == 8
    assert out.read_text().endswith("\n")
    assert_unique(rows)


@pytest.mark.integration
def test_existing_output_needs_resume_or_force(fake, seeds, tmp_path) -> None:
    fake.responder = Teacher()
    out = tmp_path / "synth.jsonl"
    synthesize(make_config(fake, seeds, out, count=5))
    before = out.read_bytes(), state_path_for(out).read_bytes()
    requests = len(fake.chat_requests())
    with pytest.raises(OutputExistsError, match=r"--resume .* --force"):
        synthesize(make_config(fake, seeds, out, count=5))
    with pytest.raises(ConfigError, match="pass only one"):
        synthesize(make_config(fake, seeds, out, count=5, resume=True, force=True))
    with pytest.raises(ConfigError, match="different topic"):
        synthesize(make_config(fake, seeds, out, count=9, topic="food", resume=True))
    assert (out.read_bytes(), state_path_for(out).read_bytes()) == before
    assert len(fake.chat_requests()) == requests
    result = synthesize(make_config(fake, seeds, out, count=3, force=True))
    assert len(read_out(out)) == 3 and result.total_requests == 1


@pytest.mark.integration
def test_cli_data_synth_end_to_end(fake, seeds, tmp_path) -> None:
    fake.responder = Teacher()
    out = tmp_path / "cli.jsonl"
    command = [
        sys.executable,
        "-m",
        "slmforge",
        "data",
        "synth",
        str(seeds),
        "--out",
        str(out),
        "--teacher",
        f"openai:teacher@{fake.base_url}",
        "--count",
        "7",
        "--per-request",
        "5",
        "--topic",
        "rail travel",
    ]
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["COLUMNS"] = "400"  # the summary table folds long paths on narrow terminals
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert len(read_out(out)) == 7
    assert "7/7" in done.stdout and str(out.name) in done.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "already exists" in again.stderr and "Traceback" not in again.stderr
