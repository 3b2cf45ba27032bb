"""`slmforge data synth --pairs`: the teacher's answer preferred, the student's not.

The teacher is the fake OpenAI-compatible server (tests/fake_openai.py): a cloud model cannot
be reached from here, so the remote teacher is mocked at the HTTP level and the real
`RemoteEngine` talks to it. The student is a real local model (the tiny pretrained Llama)
where the test is about the student; tests about resume and skipping use the fake server for
both sides (as two model names) to stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_helpers import write_jsonl
from fake_openai import FakeOpenAI, Reply
from slmforge.cli.main import main
from slmforge.config.data import SynthConfig
from slmforge.data.preference import read_preference_examples
from slmforge.data.synth_pairs import load_prompts, state_path_for, synthesize_pairs
from slmforge.errors import ConfigError, DataError, Interrupted, OutputExistsError
from slmforge.runtime.specs import load_engine

PROMPTS = [
    "What should I eat in Porto?",
    "How do I get around Lisbon?",
    "When is the best time to visit Kyoto?",
    "Where should I stay in Madrid?",
    "What should I pack for Iceland?",
]

pytestmark = pytest.mark.integration


def teacher_answer(prompt: str) -> str:
    return f"Teacher says: here is a careful answer to '{prompt}'"


def respond(body: dict) -> str:
    """The teacher answers every prompt its own way; the fake student echoes the prompt."""
    prompt = body["messages"][-1]["content"]
    return teacher_answer(prompt) if body["model"] == "teacher" else f"um, {prompt.lower()}"


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(autouse=True)
def _reset(fake, monkeypatch):
    fake.reset()
    fake.responder = respond
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    yield


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    rows = [{"prompt": p, "response": "An answer."} for p in PROMPTS]
    rows.insert(2, {"prompt": PROMPTS[0].upper(), "response": "The same prompt again."})
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def config(fake: FakeOpenAI, prompts: Path, out: Path, **options) -> SynthConfig:
    values = {
        "pairs": True,
        "prompts": prompts,
        "out": out,
        "teacher": f"openai:teacher@{fake.base_url}",
        "student": f"openai:student@{fake.base_url}",
        "max_tokens": 32,
        "temperature": 0.0,
        "max_retries": 1,
        **options,
    }
    return SynthConfig(**values)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def asked(fake: FakeOpenAI, model: str) -> list[str]:
    return [
        r.body["messages"][-1]["content"] for r in fake.chat_requests() if r.body["model"] == model
    ]


def test_pairs_from_a_real_local_student(fake, prompts, tmp_path, tiny_llama) -> None:
    out = tmp_path / "pairs.jsonl"
    cfg = config(fake, prompts, out, student=str(tiny_llama), max_tokens=24)
    result = synthesize_pairs(cfg)
    pairs = read_preference_examples(out)  # valid OpenAI DPO rows
    assert result.prompts == 5 and result.skipped.get("duplicate_prompt") == 1
    assert (
        result.rows
        == len(pairs)
        == 5 - sum(n for reason, n in result.skipped.items() if reason != "duplicate_prompt")
    )
    assert result.rows >= 4 and result.complete
    for pair in pairs:
        prompt = pair.prompt[-1]["content"]
        assert pair.prompt == [{"role": "user", "content": prompt}]
        assert pair.chosen == [{"role": "assistant", "content": teacher_answer(prompt)}]
        student = pair.rejected[0]["content"]
        assert student and student != teacher_answer(prompt)
    # the remote teacher was asked each distinct prompt once; the student ran locally
    assert asked(fake, "teacher") == PROMPTS
    assert asked(fake, "student") == []


def test_identical_answers_are_skipped_and_counted(fake, prompts, tmp_path) -> None:
    def same_for_kyoto(body: dict) -> str:
        prompt = body["messages"][-1]["content"]
        if "Kyoto" in prompt:  # the same answer up to case, spacing and punctuation
            return "Spring, autumn!" if body["model"] == "teacher" else "spring  autumn"
        return respond(body)

    fake.responder = same_for_kyoto
    out = tmp_path / "pairs.jsonl"
    result = synthesize_pairs(config(fake, prompts, out))
    rows = read_rows(out)
    assert result.rows == len(rows) == 4
    assert result.skipped == {"duplicate_prompt": 1, "identical": 1}
    assert [r["input"]["messages"][0]["content"] for r in rows] == [
        p for p in PROMPTS if "Kyoto" not in p
    ]
    assert rows[0]["non_preferred_output"] == [
        {"role": "assistant", "content": "um, what should i eat in porto?"}
    ]


def test_teacher_answer_cut_by_max_tokens_is_skipped(fake, prompts, tmp_path) -> None:
    fake.script(Reply("Porto is known for", finish_reason="length"))
    result = synthesize_pairs(config(fake, prompts, tmp_path / "pairs.jsonl"))
    assert result.rows == 4 and result.skipped["teacher_truncated"] == 1
    assert len(asked(fake, "student")) == 4  # the student is not asked for a skipped prompt


def test_resume_continues_and_repairs_a_torn_last_line(fake, prompts, tmp_path) -> None:
    out = tmp_path / "pairs.jsonl"
    first = synthesize_pairs(config(fake, prompts, out, max_requests=4))
    assert first.rows == 2 and first.done == 2 and not first.complete
    # a crash while the third pair was written: half a row and no state update
    with open(out, "a", encoding="utf-8") as handle:
        handle.write('{"input": {"messages": [{"role": "user", "content": "When')
    before = len(fake.chat_requests())
    second = synthesize_pairs(config(fake, prompts, out, resume=True))
    rows = read_rows(out)
    assert second.complete and second.rows == 5 and second.added == 3
    assert [r["input"]["messages"][0]["content"] for r in rows] == PROMPTS
    assert second.requests == 6 and len(fake.chat_requests()) - before == 6
    state = json.loads(state_path_for(out).read_text())
    assert state["next_prompt"] == 5 and state["requests"] == 10


def test_interrupted_run_keeps_pairs_and_resumes(fake, prompts, tmp_path) -> None:
    class InterruptOnCall:
        def __init__(self, engine, n: int) -> None:
            self.engine, self.n, self.calls, self.name = engine, n, 0, engine.name

        def chat(self, messages, params, adapter=None):
            self.calls += 1
            if self.calls == self.n:
                raise KeyboardInterrupt
            return self.engine.chat(messages, params, adapter)

        def adapters(self) -> list[str]:
            return []

    out = tmp_path / "pairs.jsonl"
    cfg = config(fake, prompts, out)
    student = InterruptOnCall(load_engine(cfg.student), n=3)
    with pytest.raises(Interrupted, match="--resume"):
        synthesize_pairs(cfg, student=student)
    assert len(read_rows(out)) == 2
    assert json.loads(state_path_for(out).read_text())["next_prompt"] == 2
    result = synthesize_pairs(cfg.model_copy(update={"resume": True}))
    assert result.rows == 5 and result.added == 3
    assert (
        len(asked(fake, "teacher")) == 6
    )  # the interrupted prompt's teacher answer is asked again


def test_existing_output_needs_resume_or_force_and_same_options(fake, prompts, tmp_path) -> None:
    out = tmp_path / "pairs.jsonl"
    synthesize_pairs(config(fake, prompts, out, count=2))
    assert len(read_rows(out)) == 2
    with pytest.raises(OutputExistsError, match=r"--resume .* --force"):
        synthesize_pairs(config(fake, prompts, out))
    with pytest.raises(ConfigError, match="different student"):
        synthesize_pairs(
            config(fake, prompts, out, resume=True, student=f"openai:other@{fake.base_url}")
        )
    result = synthesize_pairs(config(fake, prompts, out, force=True))
    assert result.rows == 5 and len(read_rows(out)) == 5


def test_prompts_come_from_examples_and_pairs_up_to_the_last_user_turn(tmp_path) -> None:
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Porto?"},
        {"role": "assistant", "content": "Eat a francesinha."},
    ]
    examples = write_jsonl(tmp_path / "e.jsonl", [{"messages": turns}])
    prompts, duplicates = load_prompts(examples)
    assert prompts == [turns[:4]] and duplicates == 0
    pair = {
        "input": {"messages": turns[:4]},
        "preferred_output": [turns[4]],
        "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
    }
    assert load_prompts(write_jsonl(tmp_path / "p.jsonl", [pair, pair])) == ([turns[:4]], 1)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "only a prompt"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1 \[response\]"):
        load_prompts(bad)


def test_cli_synth_pairs(fake, prompts, tmp_path, capsys) -> None:
    out = tmp_path / "cli.jsonl"
    argv = ["--log-format", "plain", "data", "synth", "--pairs", "--prompts", str(prompts)]
    argv += ["--teacher", f"openai:teacher@{fake.base_url}", "--out", str(out)]
    with pytest.raises(SystemExit) as missing:
        main(argv)
    assert missing.value.code == 2
    assert "--pairs needs --student" in capsys.readouterr().err
    argv += ["--student", f"openai:student@{fake.base_url}", "--max-tokens", "16"]
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code in (0, None)
    printed = capsys.readouterr().out
    assert "5/5 done" in printed and "duplicate_prompt=1" in printed
    assert len(read_rows(out)) == 5
