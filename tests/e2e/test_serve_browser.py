"""The page in a real browser: headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium) against a server started by the test. Screenshots go to
$UNMASK_SCREENSHOTS (default: the test's temporary folder)."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("selenium")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromium-driver (the CI script installs them)"),
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("UNMASK_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait(condition, timeout: float = 60.0):
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = condition()
        except StaleElementReferenceException:  # the page redrew the rows while they were read: look again
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the page")


def css(browser, selector):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, selector)


def test_the_runs_page_lists_every_run_with_its_state(browser, live_server, shots):
    browser.get(f"{live_server}/#/runs")
    rows = wait(lambda: css(browser, "[data-testid=runs-table] tr[data-run]"))
    assert {r.get_attribute("data-run") for r in rows} == {"finished", "team-live"}
    assert "finished" in css(browser, "tr[data-run=finished]")[0].text
    timing = browser.execute_script(
        "const t = performance.getEntriesByType('navigation')[0]; return [t.domContentLoadedEventEnd, t.loadEventEnd];"
    )
    print(f"page load: DOMContentLoaded {timing[0]:.0f} ms, load {timing[1]:.0f} ms")
    browser.save_screenshot(str(shots / "runs.png"))


def test_a_live_runs_curve_gains_a_point_when_its_metrics_grow(browser, live_server, served_live, shots):
    browser.get(f"{live_server}/#/run/team-live")
    chart = lambda: css(browser, "[data-testid=chart-loss]")
    before = int(
        wait(lambda: chart() and chart()[0].get_attribute("data-points") not in (None, "0") and chart()[0].get_attribute("data-points"))
    )
    last = [json.loads(line) for line in (served_live / "team" / "live" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line][-1]
    with open(served_live / "team" / "live" / "metrics.jsonl", "a") as f:
        f.write(
            json.dumps(
                {"step": last["step"] + 1, "loss": last["loss"] - 0.1, "lr": 1e-4, "grad_norm": 1.0, "mask_rate": 0.15, "tokens_per_s": 900}
            )
            + "\n"
        )
    wait(lambda: int(chart()[0].get_attribute("data-points")) == before + 1, timeout=20)
    assert len(css(browser, ".chart svg polyline")) >= 6
    ticks = [t.text for t in css(browser, "[data-testid=chart-lr] svg text") if t.text and not t.text.startswith("step")]
    assert ticks and not [t for t in ticks if t.startswith("-")], f"a learning rate is never negative: {ticks}"
    browser.save_screenshot(str(shots / "run.png"))


def test_a_runs_page_shows_its_mfu_data_wait_and_memory_from_its_metrics(browser, live_server, served_live, shots):
    browser.get(f"{live_server}/#/run/finished")
    numbers = wait(
        lambda: css(browser, "#run-numbers") and "MFU" in css(browser, "#run-numbers")[0].text and css(browser, "#run-numbers")[0]
    )
    lines = [json.loads(line) for line in (served_live / "finished" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in lines if "loss" in r][-1]
    assert 0 < last["mfu"] < 1 and last["memory_gib"] > 0, last
    assert f"MFU {100 * last['mfu']:.1f}%" in numbers.text and f"peak memory {last['memory_gib']:.2f} GiB" in numbers.text
    chart = wait(lambda: css(browser, "[data-testid=chart-mfu]"))[0]
    assert int(chart.get_attribute("data-points")) >= len([r for r in lines if "mfu" in r])
    assert css(browser, "[data-testid=chart-memory]")
    browser.save_screenshot(str(shots / "run-mfu.png"))


def test_each_store_and_each_window_length_gets_its_own_held_out_curve(browser, live_server, served_live, shots):
    """Per-source keys (`@web`) and other-length keys (`@len256`, also `@web@len256`) are told apart."""
    metrics = served_live / "team" / "live" / "metrics.jsonl"
    step = max(json.loads(line).get("step", 0) for line in metrics.read_text().splitlines())
    with open(metrics, "a") as f:
        for offset, loss in ((1, 4.0), (2, 3.5)):
            record = {"step": step + offset, "eval_loss": loss, "eval_accuracy": 0.3, "eval_loss@len256": loss + 0.4}
            record.update({"eval_accuracy@web": 0.35, "eval_accuracy@code": 0.25, "eval_accuracy@web@len256": 0.3})
            f.write(json.dumps(record) + "\n")
    browser.get(f"{live_server}/#/run/team-live")
    series = lambda testid: [line.get_attribute("data-series") for line in css(browser, f"[data-testid={testid}] svg polyline")]
    assert sorted(wait(lambda: series("chart-sources"), timeout=20)) == ["code", "web"]
    assert series("chart-lengths") == ["training length", "256 tokens"]
    browser.save_screenshot(str(shots / "run-sources-lengths.png"))


def test_fill_mask_shows_candidates_with_probability_bars_side_by_side(browser, live_server, tiny_model_dir, shots):
    from selenium.webdriver.support.ui import Select

    browser.get(f"{live_server}/#/fill")
    box = wait(lambda: css(browser, "[data-testid=fill-text]"))[0]
    Select(css(browser, "#fill-model")[0]).select_by_value("run:finished")
    Select(css(browser, "#fill-model-b")[0]).select_by_value(str(tiny_model_dir))
    box.clear()
    box.send_keys("the cat [MASK] the door today.")
    css(browser, "[data-testid=fill-button]")[0].click()
    columns = wait(lambda: css(browser, "[data-testid=fill-results] .card[data-model]"))
    assert len(columns) == 2 and all(len(c.find_elements("css selector", ".candidate")) == 5 for c in columns)
    assert css(browser, ".bar")[0].get_attribute("style").startswith("width:")
    browser.save_screenshot(str(shots / "fill.png"))


def test_the_masking_walkthrough_draws_redraws_and_scores_the_picks(browser, live_server, shots):
    browser.get(f"{live_server}/#/masking")
    sentence = wait(lambda: css(browser, "[data-testid=mask-text]"))[0]
    sentence.clear()
    sentence.send_keys("the cat sees the door today and a dog reads a book every morning.")
    css(browser, "[data-testid=mask-draw]")[0].click()
    table = lambda: css(browser, "[data-testid=mask-table] tr[data-picked]")
    wait(lambda: table())
    first = [r.get_attribute("data-picked") for r in table()]
    assert "true" in first and css(browser, "[data-testid=mask-loss]")
    browser.save_screenshot(str(shots / "masking.png"))
    css(browser, "[data-testid=mask-redraw]")[0].click()
    wait(lambda: [r.get_attribute("data-picked") for r in table()] != first, timeout=20)


def test_the_compare_page_scores_both_models(browser, live_server, shots):
    browser.get(f"{live_server}/#/compare")
    wait(lambda: css(browser, "[data-testid=compare-button]"))[0].click()
    rows = wait(lambda: css(browser, "[data-testid=compare-table] tr"), timeout=120)
    assert any("top-1 accuracy" in r.text for r in rows)
    browser.save_screenshot(str(shots / "compare.png"))
