"""The jobs dashboard at /ui with a DPO job, in headless Chromium: upload preference pairs, pick
method dpo and a beta in the form, and watch the reward accuracy and margin curves that only
preference jobs have."""

from __future__ import annotations

import shutil

import pytest

from slmforge.config.jobs import JobsServeConfig
from slmforge.data.sample import write_sample
from slmforge.jobs.server import start_jobs_in_thread

pytestmark = pytest.mark.integration

KEY = "sk-test-dashboard-dpo-0123"


def _points(chart: str) -> str:
    return f"Number(document.querySelector('#{chart} polyline.curve')?.dataset.points ?? 0)"


def test_dashboard_plots_the_rewards_of_a_dpo_job(tmp_path, tiny_llama) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    data = write_sample(tmp_path / "pairs.jsonl", kind="preference", count=24)
    server = start_jobs_in_thread(
        JobsServeConfig(port=0, home=tmp_path / "jobs", api_key=KEY, device="cpu")
    )
    errors: list[str] = []
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{server.url}/ui")
            page.fill("#key", KEY)
            page.dispatch_event("#key", "change")
            page.set_input_files("#file", str(data))
            page.fill("#model", str(tiny_llama))
            page.select_option("#method", "dpo")
            page.fill("#beta", "0.2")
            page.fill("#batch_size", "2")
            page.fill("#max_steps", "4")
            assert page.locator("#reward_accuracy").is_hidden()
            page.click("#start")
            page.wait_for_selector("#jobs tr.job", timeout=30_000)
            assert page.locator("#message").inner_text() == ""
            page.wait_for_function(
                "document.querySelector('#jobs .status').textContent === 'succeeded'",
                timeout=180_000,
            )
            page.wait_for_function(f"{_points('reward_accuracy')} === 4", timeout=10_000)
            page.wait_for_function(f"{_points('reward_margin')} === 4", timeout=10_000)
            assert page.locator("#reward_margin").is_visible()
            assert _count(page, "loss") == 4
            # a DPO step has no token accuracy: its chart gives way to the rewards
            assert page.locator("#accuracy").is_hidden()
            page.screenshot(path=str(tmp_path / "dashboard-dpo.png"), full_page=True)
            browser.close()
    finally:
        server.stop()
    assert errors == []
    assert (tmp_path / "dashboard-dpo.png").stat().st_size > 20_000


def _count(page: object, chart: str) -> int:
    return page.evaluate(_points(chart))
