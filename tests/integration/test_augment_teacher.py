"""`slmforge data augment` with a teacher behind an OpenAI-compatible endpoint (the fake server
on 127.0.0.1 standing in for a cloud model): paraphrases are parsed from a chatty reply,
duplicates and near-duplicates (all-MiniLM-L6-v2 embeddings) are dropped, and `data split`
keeps every original with its paraphrases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from slmforge.cli.main import main
from slmforge.data.sample import sample_pairs

pytestmark = pytest.mark.integration

ROWS = sample_pairs()[:10]


def _teacher(body: dict) -> str:
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    if "rewrite user messages" in system:
        prompt = user.rsplit("Message: ", 1)[-1]
        variants = [
            f"I am planning a holiday and need some advice. {prompt} Thanks a lot!",
            prompt.upper(),  # the same prompt: an exact duplicate
            prompt.rstrip("?") + " ?",  # a near-duplicate
        ]
        return "Sure, here they are:\n```json\n" + json.dumps(variants) + "\n```"
    if user.startswith("Translate into French"):
        return "FR: " + user.split("\n\n", 1)[1]
    if user.startswith("Translate into English"):
        return "Quick question from a traveller: " + user.split("\n\n", 1)[1].removeprefix("FR: ")
    return "A freshly written answer."


def _cli(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI() as server:
        server.responder = _teacher
        yield server


def test_paraphrases_are_parsed_deduplicated_and_kept_with_their_group(fake, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    out = tmp_path / "augmented.jsonl"
    teacher = f"openai:teacher@{fake.base_url}"
    argv = ["data", "augment", str(data), "--out", str(out), "--teacher", teacher]
    _cli([*argv, "--strategy", "paraphrase", "--copies", "3"])
    rows = _rows(out)
    added = rows[len(ROWS) :]
    assert len(added) == len(ROWS)  # one kept of three per prompt
    for row in added:
        source = ROWS[row["meta"]["augmented_from"] - 1]
        assert row["meta"]["strategy"] == "paraphrase"
        assert row["messages"][0]["content"].startswith("I am planning a holiday")
        assert row["messages"][1]["content"] == source["response"]
    state = json.loads(out.with_name(out.name + ".augment.json").read_text())
    assert state["dropped"] == {"duplicate": len(ROWS), "near_duplicate": len(ROWS)}
    assert state["requests"] == len(ROWS)

    split = tmp_path / "split"
    _cli(["data", "split", str(out), "--out-dir", str(split), "--validation", "0.3"])
    part_of = {}
    for part in ("train", "validation"):
        for row in _rows(split / f"{part}.jsonl"):
            group = row.get("meta", {}).get("group") or row["messages"][0]["content"].casefold()
            part_of.setdefault(" ".join(group.split()), set()).add(part)
    assert len(part_of) == len(ROWS)
    assert all(len(parts) == 1 for parts in part_of.values())


def test_back_translation_with_regenerated_responses(fake, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]), encoding="utf-8")
    out = tmp_path / "augmented.jsonl"
    teacher = f"openai:teacher@{fake.base_url}"
    argv = ["data", "augment", str(data), "--out", str(out), "--teacher", teacher]
    # the sample prompts are templated ("What should I eat in X?"): different places are
    # near-duplicates at the default 0.95, so this run keeps rows up to 0.995
    _cli(
        [
            *argv,
            "--strategy",
            "back_translation",
            "--regenerate-response",
            "--near-duplicate",
            "0.995",
        ]
    )
    added = _rows(out)[3:]
    assert [r["meta"]["via"] for r in added] == ["French"] * 3
    assert all(r["meta"]["response"] == "regenerated" for r in added)
    assert all(r["messages"][1]["content"] == "A freshly written answer." for r in added)
    assert all(r["messages"][0]["content"].startswith("Quick question") for r in added)
    state = json.loads(out.with_name(out.name + ".augment.json").read_text())
    assert state["requests"] == 3 * 3  # there, back, and one answer per kept row
