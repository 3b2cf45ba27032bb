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
