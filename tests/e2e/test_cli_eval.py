"""`slmforge eval` as a user types it, against remote targets served by the fake OpenAI-compatible
server (a stand-in for cloud models, which cannot be reached here): comparison, report (opened
in headless Chromium), gating, resume, and bad input."""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import pytest

from data_helpers import write_jsonl
from fake_openai import FakeOpenAI, Reply
from slmforge.artifacts import read_manifest
from slmforge.cli.main import main

pytestmark = pytest.mark.integration

QUESTIONS = [
    ("What should I eat in Lisbon?", "Try a warm pastel de nata from a bakery in Belem."),
    ("How do I get around Vienna?", "The U-Bahn and trams are excellent and cheap."),
    ("When should I visit Kyoto?", "Visit in spring for the cherry blossoms or in autumn."),
    ("What should I pack for Iceland?", "Pack waterproof layers and sturdy hiking boots."),
    ("What should I see in Rome?", "See the Colosseum early in the morning before the crowds."),
    ("Where should I stay in Paris?", "Stay in the Marais for walkable streets and cafes."),
    ("What should I eat in Naples?", "Eat a wood-fired margherita pizza near the old town."),
    ("How do I get around Tokyo?", "Use the metro and a rechargeable transit card."),
]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def _answers(body: dict) -> str | Reply:
    """`good` answers with the reference, `vague` with a generic reply, `flaky` fails every row
    (after answering the reachability probe)."""
    question = body["messages"][-1]["content"]
    if question not in dict(QUESTIONS):
        return "OK"  # the probe each remote target gets before the run
    if body["model"] == "good":
        return dict(QUESTIONS)[question]
    if body["model"] == "vague":
        return "It depends on your plans, so check a guide book."
    return Reply.failure(400)


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI() as server:
        server.responder = _answers
        yield server


@pytest.fixture
def data(tmp_path) -> Path:
    return write_jsonl(
        tmp_path / "test.jsonl", [{"prompt": q, "response": a} for q, a in QUESTIONS]
    )


def _eval(data: Path, out: Path, fake: FakeOpenAI, *extra: str) -> list[str]:
    return [
        "eval",
        "--data",
        str(data),
        "--target",
        f"good=openai:good@{fake.base_url}",
        "--target",
        f"vague=openai:vague@{fake.base_url}",
        "--out",
        str(out),
        "--bootstrap",
        "200",
        *extra,
    ]


@pytest.fixture(scope="module")
def compared(fake, tmp_path_factory) -> dict:
    """One comparison run (with a gate the vague target misses), shared by the report tests."""
    root = tmp_path_factory.mktemp("compare")
    data = write_jsonl(root / "test.jsonl", [{"prompt": q, "response": a} for q, a in QUESTIONS])
    out = root / "eval"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["slmforge"])
        try:
            main(_eval(data, out, fake, "--fail-under", "f1=0.5", "--fail-over", "refusal=0.2"))
        except SystemExit as exit_info:
            code = exit_info.code
    return {"out": out, "code": code}


def test_comparison_writes_the_artifact_and_the_gate_fails_with_exit_1(compared):
    out = compared["out"]
    assert compared["code"] == 1  # vague misses f1 >= 0.5
    manifest = read_manifest(out)
    assert manifest.kind == "eval" and manifest.source["data"].sha256
    assert manifest.metrics["good"]["f1"] == 1.0 and manifest.metrics["vague"]["f1"] < 0.2
    summary = json.loads((out / "summary.json").read_text())
    gates = {(g["target"], g["metric"]): g["passed"] for g in summary["gates"]}
    assert gates == {
        ("good", "f1"): True,
        ("vague", "f1"): False,
        ("good", "refusal"): True,
        ("vague", "refusal"): True,
    }
    f1 = next(c for c in summary["comparisons"] if c["metric"] == "f1")
    assert (f1["a"], f1["b"], f1["wins"], f1["losses"], f1["n"]) == ("vague", "good", 0, 8, 8)
    assert f1["p_value"] < 0.05
    assert any(f["better"] == "good" and f["metric"] == "f1" for f in summary["findings"])
    perf = summary["results"]["good"]["performance"]
    assert perf["completion_tokens"]["sum"] > 0 and perf["ttft_s"]["p50"] > 0
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and rows[0]["targets"]["good"]["text"] == QUESTIONS[0][1]
    assert not Path(f"{out}.partial").exists()


def test_report_md_shows_the_same_numbers_as_report_html(compared):
    markdown = (compared["out"] / "report.md").read_text()
    html = (compared["out"] / "report.html").read_text()
    assert "good is better than vague on f1" in markdown
    assert "| vague | f1 >= 0.5 |" in markdown and "FAIL" in markdown
    numbers = re.findall(r"[+-]?\d+\.\d+", markdown.split("## Quality")[1])
    assert len(numbers) > 50
    for number in set(numbers):
        assert number in html, number
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r"(src|href)\s*=|<link|@import|url\(", html)


def test_report_opens_in_headless_chromium_without_errors(compared, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto((compared["out"] / "report.html").as_uri())
        assert page.locator("#row-list .row").count() == 8
        assert page.locator("#row-list .answer").count() == 16  # both targets side by side
        assert page.locator("svg").count() >= 12  # metric bars + latency box plots
        page.fill("#filter", "kyoto")
        assert page.locator("#row-list .row").count() == 1
        assert "cherry blossoms" in page.locator("#row-list .row").inner_text()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 20_000


def test_resume_keeps_the_answers_of_an_interrupted_run(fake, data, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "--data", str(data), "--out", str(out), "--metrics", "f1"]
    argv += ["--target", f"good=openai:good@{fake.base_url}"]
    argv += ["--target", f"flaky=openai:flaky@{fake.base_url}", "--max-retries", "0"]
    fake.requests.clear()
    code, _, err = _run(argv, capsys)
    assert code == 1 and "target flaky: every request failed" in _error_line(err)
    assert not out.exists() and (tmp_path / "eval.partial" / "answers.jsonl").is_file()

    code, _, err = _run(argv, capsys)
    assert code == 2 and "holds an interrupted eval; pass --resume" in _error_line(err)

    fake.requests.clear()
    fixed = [a.replace("openai:flaky", "openai:good") for a in argv]
    fixed[fixed.index(f"flaky=openai:good@{fake.base_url}")] = f"fixed=openai:vague@{fake.base_url}"
    code, _, err = _run([*fixed, "--resume"], capsys)
    assert code == 0, err
    assert "good: 8 answers kept from the last run" in err
    asked = [r.body["model"] for r in fake.chat_requests()]
    assert asked.count("good") == 1  # the reachability probe only
    assert asked.count("vague") == 9
    assert not (tmp_path / "eval.partial").exists() and read_manifest(out).kind == "eval"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_bad_input_exits_2_and_writes_nothing(fake, data, tmp_path, capsys):
    out = tmp_path / "eval"
    no_refs = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q} for q, _ in QUESTIONS])
    target = ["--target", f"good=openai:good@{fake.base_url}"]
    cases = [
        (
            ["--data", str(no_refs), *target],
            "prompts.jsonl:1, ",
            "no reference answer",
        ),
        (
            [
                "--data",
                str(data),
                "--target",
                f"down=openai:m@http://127.0.0.1:{_closed_port()}/v1",
            ],
            "target down cannot be reached",
            "connection failed",
        ),
        (["--data", str(data), *target, "--metrics", "blue"], "unknown metric 'blue'", "known:"),
        (
            ["--data", str(data), *target, "--judge-metrics", "helpfulness", "--judge", "x"],
            "unknown evaluator 'helpfulness'",
            "relevance",
        ),
        (["--data", str(data), *target, "--fail-under", "f2=0.5"], "'f2' is not computed", ""),
        (["--data", str(data), "--target", "nope=./missing-model"], "no such model folder", ""),
    ]
    for options, first, second in cases:
        code, _, err = _run(["eval", *options, "--out", str(out)], capsys)
        line = _error_line(err)
        assert code == 2 and first in line and second in line, line
        assert not out.exists() and not (tmp_path / "eval.partial").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".eval")]
    # prompt-only data is fine for metrics that need no reference
    code, _, err = _run(
        ["eval", "--data", str(no_refs), *target, "--metrics", "length", "--out", str(out)], capsys
    )
    assert code == 0, err


def test_throttled_and_failing_requests_are_retried(data, tmp_path, capsys):
    with FakeOpenAI() as server:
        server.responder = _answers
        # the probe passes, then the first row is throttled (429 with Retry-After) and fails (503)
        server.script("OK", Reply.failure(429, retry_after=0), Reply.failure(503))
        argv = ["eval", "--data", str(data), "--target", f"good=openai:good@{server.base_url}"]
        argv += ["--metrics", "exact_match", "--concurrency", "1", "--out", str(tmp_path / "o")]
        code, _, err = _run(argv, capsys)
        assert code == 0, err
        assert len(server.chat_requests()) == 1 + 2 + len(QUESTIONS)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["results"]["good"]["errors"] == 0
    assert summary["results"]["good"]["metrics"]["exact_match"]["mean"] == 1.0
