"""`slmforge app` in headless Chromium (Debian's), as a user drives it.

The app runs as its own process (`python -m slmforge app`, a free port), with the tiny fp32
ONNX llama (adapters travel and terse) as the local model and a real slmforge server on the
same model as the cloud (`openai:cloud@URL`, started in this process). The local model is made
to fail the way a user would see it fail: the app's content filter (`--safety`) blocks prompts
naming "zanzibar" for the local model, so local-first falls back to the cloud.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from slmforge.config.serve import ServeConfig
from slmforge.serve.server import RunningServer, start_in_thread

pytestmark = pytest.mark.integration

# input-only: the local answers stream token by token (no output windows to screen)
POLICY = """\
classifiers:
  blocklist: {terms: {violence: [zanzibar]}, builtin: false}
input: {violence: low}
output: {}
"""
READY_S = 120
ANSWER_MS = 60_000
STATS = re.compile(r"^TTFT \d+ ms · \d+\.\d tokens/s · \d+ tokens$")


@pytest.fixture(scope="module")
def cloud(llama_onnx: Path) -> Iterator[RunningServer]:
    server = start_in_thread(ServeConfig(model=str(llama_onnx), port=0, served_model_name="cloud"))
    yield server
    server.stop()


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:  # drained until the app exits, so its log never blocks it
        lines.put(line)


@pytest.fixture(scope="module")
def app_url(llama_onnx: Path, cloud: RunningServer, tmp_path_factory) -> Iterator[str]:
    policy = tmp_path_factory.mktemp("app") / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    command = [
        *(sys.executable, "-m", "slmforge", "--log-format", "plain", "app"),
        *("--local", f"{llama_onnx}+travel", "--cloud", f"openai:cloud@{cloud.url}/v1"),
        *("--port", "0", "--safety", str(policy)),
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stderr, lines), daemon=True).start()
    try:
        yield _wait_for_url(process, lines)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_url(process: subprocess.Popen, lines: queue.Queue) -> str:
    seen = []
    while True:
        try:
            line = lines.get(timeout=READY_S)
        except queue.Empty:
            raise AssertionError(f"the app did not start: {''.join(seen)}") from None
        seen.append(line)
        found = re.search(r"app on (http://\S+)", line)
        if found:
            return found.group(1)
        assert process.poll() is None, f"the app exited: {''.join(seen)}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, app_url: str) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage); console errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(app_url)
    page.wait_for_selector("body[data-ready='1']")
    yield page
    context.close()
    assert errors == []


def ask(page: Page, question: str) -> None:
    """Send a question and wait until the page has handled the whole answer."""
    answered = "Number(document.body.dataset.answered || 0)"
    before = page.evaluate(answered)
    page.fill("#question", question)
    page.press("#question", "Enter")
    page.wait_for_function(f"{answered} > {before}", timeout=ANSWER_MS)


def answers(page: Page, side: str) -> list[dict]:
    """The answer bubbles of a pane: text, streamed pieces and the line under each."""
    return page.eval_on_selector_all(
        f"#messages-{side} .bubble.answer",
        "nodes => nodes.map(n => ({text: n.querySelector('.text').textContent,"
        " pieces: Number(n.dataset.pieces), meta: n.querySelector('.meta')?.textContent}))",
    )


def test_compare_streams_both_panes_with_speed_similarity_and_adapters(page, tmp_path) -> None:
    assert page.input_value("#policy") == "compare"
    assert page.input_value("#adapter") == "travel"  # from --local FOLDER+travel
    assert page.locator("#adapter option").all_inner_texts() == ["(base model)", "terse", "travel"]
    page.fill("#max_tokens", "24")
    page.dispatch_event("#max_tokens", "change")
    ask(page, "What should I pack for a weekend in Lisbon?")
    for side in ("local", "cloud"):
        (answer,) = answers(page, side)
        assert answer["text"].strip() and answer["pieces"] > 1, answer  # streamed in pieces
        assert STATS.match(page.inner_text(f"#stats-{side}")), page.inner_text(f"#stats-{side}")
    assert answers(page, "local")[0]["meta"].startswith("adapter travel · TTFT")
    page.wait_for_function("!document.querySelector('#comparison').hidden", timeout=ANSWER_MS)
    assert re.match(r"^Similarity of the two answers: -?\d\.\d{3}$", page.inner_text("#comparison"))
    page.screenshot(path=str(tmp_path / "app-compare.png"))

    page.select_option("#adapter", "terse")
    ask(page, "And for a week in Porto?")
    local = answers(page, "local")
    assert len(local) == 2 and local[1]["meta"].startswith("adapter terse · TTFT")
    assert len(answers(page, "cloud")) == 2
    page.screenshot(path=str(tmp_path / "app-adapter.png"))

    with page.expect_download() as download:
        page.click("#export-json")
    exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert [t["question"] for t in exported["turns"]] == [
        "What should I pack for a weekend in Lisbon?",
        "And for a week in Porto?",
    ]
    assert [t["adapter"] for t in exported["turns"]] == ["travel", "terse"]
    assert exported["turns"][0]["comparison"]["similarity"] is not None
    with page.expect_download() as download:
        page.click("#export-md")
    assert "## And for a week in Porto?" in Path(download.value.path()).read_text(encoding="utf-8")

    page.reload()  # the conversation belongs to this tab and survives a reload
    page.wait_for_selector("body[data-ready='1']")
    assert len(answers(page, "cloud")) == 2 and page.input_value("#adapter") == "terse"
    assert "sk-" not in page.content()  # no key anywhere in the page


def test_local_first_falls_back_to_the_cloud_when_local_is_blocked(page, tmp_path) -> None:
    page.select_option("#policy", "local-first")
    page.fill("#max_tokens", "16")
    page.dispatch_event("#max_tokens", "change")
    assert page.is_hidden("#messages-local") and page.is_visible("#messages-routed")
    ask(page, "What is there to see in Lisbon?")
    assert (
        page.inner_text("#decision")
        == "local-first → local: local-first asks the local model first"
    )
    assert [a["meta"].split(" · ")[0] for a in answers(page, "routed")] == ["local"]

    ask(page, "Tell me about Zanzibar")
    decision = page.inner_text("#decision")
    assert decision == (
        "local-first → cloud: fell back to the cloud: the content filter blocked the prompt "
        "(violence)"
    )
    assert "fallback" in page.get_attribute("#decision", "class")
    routed = answers(page, "routed")
    assert [a["meta"].split(" · ")[0] for a in routed] == ["local", "cloud"]
    assert routed[1]["text"].strip() and routed[1]["pieces"] > 1
    assert re.match(r"^cloud: TTFT \d+ ms", page.inner_text("#stats-routed"))
    page.screenshot(path=str(tmp_path / "app-fallback.png"))
