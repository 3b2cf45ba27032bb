"""The jobs dashboard at /ui in headless Chromium: start a job from the form, watch its loss
curve grow while it trains, and save a screenshot."""

from __future__ import annotations

import shutil

import pytest

from slmforge.config.jobs import JobsServeConfig
from slmforge.data.sample import write_sample
from slmforge.jobs.server import start_jobs_in_thread

pytestmark = pytest.mark.integration

KEY = "sk-test-dashboard-0123"
POINTS = "document.querySelector('#loss polyline.curve')?.dataset.points ?? 0"


def test_dashboard_starts_a_job_and_plots_its_loss(tmp_path, tiny_llama) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    data = write_sample(tmp_path / "travel.jsonl")
    server = start_jobs_in_thread(
        JobsServeConfig(port=0, home=tmp_path / "jobs", api_key=KEY, device="cpu")
    )
    errors: list[str] = []
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{server.url}/ui")
            page.fill("#key", KEY)
            page.dispatch_event("#key", "change")
            page.set_input_files("#file", str(data))
            page.fill("#model", str(tiny_llama))
            page.fill("#suffix", "ui")
            page.fill("#batch_size", "2")
            page.fill("#max_steps", "5")
            page.click("#start")
            page.wait_for_selector("#jobs tr.job", timeout=30_000)
            assert page.locator("#message").inner_text() == ""
            # the loss curve appears once training logs a step and ends with one point a step
            # (whether the page sees it grow in between depends on how fast the machine trains)
            page.wait_for_function(f"Number({POINTS}) >= 1", timeout=120_000)
            page.wait_for_function(
                "document.querySelector('#jobs .status').textContent === 'succeeded'",
                timeout=120_000,
            )
            page.wait_for_function(f"Number({POINTS}) === 5", timeout=10_000)
            assert "ft:llama:ui:" in page.locator("#jobs").inner_text()
            # the events pane polls on its own timer, so it may show the last event a moment
            # after the status column does
            page.wait_for_function(
                "document.querySelector('#events').innerText"
                ".includes('The job has successfully completed')",
                timeout=30_000,
            )
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            browser.close()
    finally:
        server.stop()
    assert errors == []
    assert (tmp_path / "dashboard.png").stat().st_size > 20_000
