"""Judge prompts and reply parsing: every reply ends in exactly one state, never a made-up score."""

from __future__ import annotations

import pytest

from slmforge.errors import InputError
from slmforge.evaluate.judge import (
    JudgeCache,
    judge_prompts,
    parse_judgement,
    parse_prompt,
    resolve,
)


def test_the_five_evaluators_ship_as_versioned_prompt_files():
    prompts = judge_prompts()
    assert set(prompts) == {"groundedness", "relevance", "coherence", "fluency", "similarity"}
    assert prompts["groundedness"].needs == ("context", "question", "answer")
    assert prompts["similarity"].needs == ("question", "reference", "answer")
    for prompt in prompts.values():
        assert prompt.version >= 1 and len(prompt.fingerprint) == 16
        assert '{"score": <integer 1-5>' in prompt.user  # asks for JSON
        messages = prompt.messages(
            {"question": "Q?", "answer": "A{x}.", "context": "C.", "reference": "R."}
        )
        assert [m["role"] for m in messages] == ["system", "user"]
        assert "{{" not in messages[1]["content"] and "A{x}." in messages[1]["content"]


def test_unknown_evaluator_is_named():
    with pytest.raises(InputError, match=r"unknown evaluator 'helpfulness' \(known: "):
        resolve(["helpfulness"])


def test_malformed_prompt_file_is_rejected():
    with pytest.raises(InputError, match=r"bad\.md"):
        parse_prompt("name: x\n# system\nhi", "bad.md")
    with pytest.raises(InputError, match="integer 'version'"):
        parse_prompt("---\nname: x\nversion: one\n---\n# system\na\n# user\nb", "x.md")


@pytest.mark.parametrize(
    ("reply", "status", "score"),
    [
        ('{"score": 4, "reason": "on topic"}', "ok", 4.0),
        ('Here you go:\n```json\n{"score": 5, "reason": "clear",}\n```', "ok", 5.0),
        ('{"Score": "3", "Reason": "partly"}', "ok", 3.0),
        ('{"rating": 2, "explanation": "off topic"}', "ok", 2.0),
        ('{"thoughts": "x"} then {"score": 1, "reason": "wrong"}', "ok", 1.0),
        ('{"score": 7, "reason": "great"}', "out_of_range", None),
        ('{"score": 0, "reason": "bad"}', "out_of_range", None),
        ('{"score": "high", "reason": "?"}', "unparsed", None),
        ('{"score": true}', "unparsed", None),
        ("The answer is relevant. Score: 4", "unparsed", None),
        ('{"score": 4, "reason": "cut off', "unparsed", None),
        ("", "unparsed", None),
    ],
)
def test_parse_judgement(reply, status, score):
    verdict = parse_judgement(reply)
    assert (verdict.status, verdict.score) == (status, score)
    if status != "ok":
        assert verdict.raw == reply  # kept to see what the judge said


def test_cache_survives_a_cut_off_line(tmp_path):
    path = tmp_path / "judge.jsonl"
    cache = JudgeCache(path)
    cache.put("k1", '{"score": 4}')
    with open(path, "a") as handle:
        handle.write('{"key": "k2", "reply": "cut')
    again = JudgeCache(path)
    assert again.get("k1") == '{"score": 4}' and again.get("k2") is None and again.hits == 1
