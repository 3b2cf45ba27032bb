"""`slmforge app compare` as a user types it: the tiny ONNX model with its travel adapter as the
local side, the fake OpenAI-compatible server (a stand-in for a cloud model, which cannot be
reached here) as the cloud side and as the judge; the artifact, its side-by-side table and
speed statistics, and bad input."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from data_helpers import write_jsonl
from fake_openai import FakeOpenAI
from slmforge.artifacts import read_manifest
from slmforge.cli.main import main

pytestmark = pytest.mark.integration

QUESTIONS = {
    "What should I eat in Lisbon?": "Cloud says: a warm pastel de nata in Belem.",
    "How do I get around Vienna?": "Cloud says: the U-Bahn and trams.",
    "When should I visit Kyoto?": "Cloud says: in spring or autumn.",
}


def _reply(body: dict) -> str:
    """The cloud answers from QUESTIONS; the judge rates cloud answers 5 and others 2."""
    content = body["messages"][-1]["content"]
    if body["model"] == "judge":
        score = 5 if "Cloud says" in content else 2
        return json.dumps({"score": score, "reason": f"rated {score} for relevance"})
    return QUESTIONS.get(content, "OK")  # "OK" for the probe a remote side gets first


def _run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["app", "compare", *args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI() as server:
        server.responder = _reply
        yield server


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q} for q in QUESTIONS])


def test_compare_writes_the_table_speed_and_preferences(
    llama_onnx: Path, fake: FakeOpenAI, data: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "compare"
    args = [
        "--data", str(data), "--local", f"{llama_onnx}+travel",
        "--cloud", f"openai:cloud@{fake.base_url}", "--judge", f"openai:judge@{fake.base_url}",
        "--out", str(out), "--max-tokens", "12",
    ]  # fmt: skip
    code, stdout, stderr = _run(capsys, *args)
    assert code == 0, stderr
    assert "speed on 3 prompts" in stdout and f"report: {out}/compare.md" in stdout

    manifest = read_manifest(out)
    assert manifest.kind == "app-compare"
    assert set(manifest.source) == {"data", "target:local", "target:cloud"}
    assert manifest.source["data"].sha256 and manifest.metrics["similarity"] is not None
    assert {"compare.md", "compare.jsonl", "summary.json", "eval/report.html"} <= set(
        manifest.files
    )
    assert read_manifest(out / "eval").kind == "eval"

    records = [json.loads(line) for line in (out / "compare.jsonl").read_text().splitlines()]
    assert [r["question"] for r in records] == list(QUESTIONS)
    for record in records:
        assert record["local"]["text"] and record["local"]["error"] is None
        assert record["cloud"]["text"] == QUESTIONS[record["question"]]
        assert -1 <= record["similarity"] <= 1
        assert record["preference"]["preferred"] == "cloud"
        assert "rated 5 for relevance" in record["preference"]["reason"]

    summary = json.loads((out / "summary.json").read_text())
    for figure in ("ttft_s", "tokens_per_s"):
        speed = summary["speed"][figure]
        assert speed["local"]["n"] == speed["cloud"]["n"] == 3
        assert all(speed[side][stat] > 0 for side in ("local", "cloud") for stat in ("p50", "p95"))
        assert speed["local_over_cloud"]["mean"] > 0
    assert summary["similarity"]["metric"] == "embedding_similarity"
    assert summary["similarity"]["n"] == 3
    assert summary["preference"] == {
        "judge": f"openai:judge@{fake.base_url}",
        "local": 0,
        "cloud": 3,
        "tie": 0,
        "unjudged": 0,
    }
    table = (out / "compare.md").read_text()
    assert "| # | question | local | cloud | similarity | judge |" in table
    assert "| time to first token p95 (s) |" in table and "Cloud says: in spring" in table

    again = _run(capsys, *args)
    assert again[0] == 2
    assert again[2].strip() == f"error: {out} already exists; pass --force to replace it"


def test_an_interrupted_compare_resumes_without_asking_again(
    llama_onnx: Path, fake: FakeOpenAI, data: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Ctrl-C while the judge works (simulated: the second preference raises
    KeyboardInterrupt, as a Ctrl-C in the main thread would) keeps the answers and the judge's
    replies in OUT.partial/; --resume asks the cloud nothing again and the judge only about the
    prompts it had not judged."""
    from slmforge.app.scoring import PairJudge

    out = tmp_path / "compare"
    args = [
        "--data", str(data), "--local", f"{llama_onnx}+travel",
        "--cloud", f"openai:cloud@{fake.base_url}", "--judge", f"openai:judge@{fake.base_url}",
        "--out", str(out), "--max-tokens", "8", "--similarity", "f1",
    ]  # fmt: skip
    prefer, calls = PairJudge.prefer, []

    def interrupted_at_the_second(self, question, answers):
        calls.append(question)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return prefer(self, question, answers)

    fake.requests.clear()
    with monkeypatch.context() as patch:
        patch.setattr(PairJudge, "prefer", interrupted_at_the_second)
        code, _, err = _run(capsys, *args)
    stage = tmp_path / "compare.partial"
    assert code == 130
    assert err.strip().splitlines()[-1] == (
        f"error: interrupted; what is done is kept in {stage}: run the same command with "
        "--resume to continue"
    )
    assert not out.exists() and (stage / "eval" / "rows.jsonl").is_file()

    def asked(model: str) -> list[str]:
        return [r.body["messages"][-1]["content"] for r in fake.chat_requests()
                if r.body["model"] == model and r.body.get("max_tokens") != 1]  # fmt: skip

    cloud_before, judged_before = asked("cloud"), asked("judge")
    assert sorted(cloud_before) == sorted(QUESTIONS) and len(judged_before) == 2
    code, _, err = _run(capsys, *args)
    assert code == 2 and f"{stage} holds an interrupted app compare; pass --resume" in err

    fake.requests.clear()
    code, _, err = _run(capsys, *args, "--resume")
    assert code == 0, err
    assert asked("cloud") == []  # every answer came from the partial eval
    judged = asked("judge")
    assert len(judged) == 4 and not set(judged) & set(judged_before)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preference"]["cloud"] == 3 and summary["rows"] == 3
    assert not stage.exists()


def test_bad_input_fails_before_any_work(
    llama_onnx: Path, fake: FakeOpenAI, data: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "compare"
    base = ["--data", str(data), "--local", str(llama_onnx), "--out", str(out)]
    cloud = ["--cloud", f"openai:cloud@{fake.base_url}"]
    base_f1 = [*base, "--similarity", "f1"]  # no embedding model needed to fail
    code, _, err = _run(capsys, *base, *cloud, "--similarity", "length")
    assert code == 2
    assert err.strip().startswith(
        "error: --similarity length: not a metric that compares two texts; use "
        "embedding_similarity, f1"
    )
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    unreachable = f"openai:cloud@http://127.0.0.1:{closed}/v1"
    code, _, err = _run(capsys, *base_f1, "--cloud", unreachable)
    assert code == 2 and "error: target cloud cannot be reached" in err
    code, _, err = _run(capsys, *base_f1, *cloud, "--max-tokens", "0")
    assert code == 2 and "--max-tokens" in err
    assert list(tmp_path.iterdir()) == [data]  # no output, no temporary folder left
