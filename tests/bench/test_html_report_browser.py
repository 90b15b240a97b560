"""``report.html`` as a reader sees it: opened in headless Chromium, no console errors, every table has rows,
every figure decodes, and a screenshot of the whole page is saved beside it.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; skipped without them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from peftlab.bench.records import runs_dir
from peftlab.bench.report import write_report

from bench.test_models_and_report import record

pytestmark = pytest.mark.browser
MISSING = ("needs headless Chromium: apt-get install chromium chromium-driver (Debian) and pip install selenium "
           "(in peftlab[browser])")
MIB = 2**20


@pytest.fixture(scope="module")
def browser() -> Iterator:
    webdriver = pytest.importorskip("selenium.webdriver", reason=MISSING)
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip(MISSING)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, page: Path) -> list[dict]:
    """Load ``page`` and wait for its images; returns the console entries it logged."""
    driver.get_log("browser")  # drop what an earlier page logged
    driver.get(page.as_uri())
    driver.execute_async_script("const done = arguments[0]; Promise.all([...document.images].map("
                                "image => image.decode().catch(() => null))).then(() => done(null));")
    return driver.get_log("browser")


def sweep_records(folder: Path) -> None:
    """A small sweep: an ablation over rank (score and ablation plots), one run with a memory breakdown (the
    memory table and its figure), and a failed run (the runs table's error column)."""
    runs = runs_dir(folder)
    runs.mkdir(parents=True)
    breakdown = {part: {"measured": size * MIB, "predicted": size * MIB}
                 for part, size in (("weights", 3), ("gradients", 1), ("optimizer", 2), ("activations", 5))}
    for rank in (1, 4, 16):
        label = f"lora[rank={rank}]"
        run = record(label, {"rank": rank}, 80 + rank / 4)
        if rank == 4:
            run["memory"] = {"peak_bytes": 12 * MIB, "breakdown": breakdown}
        (runs / f"{label}.json").write_text(json.dumps(run))
    failed = {**record("ia3", {"rank": 1}, 0.0), "status": "failed", "score": None, "error": "CUDA out of memory"}
    (runs / "ia3.json").write_text(json.dumps(failed))


def test_report_page_renders_without_console_errors(browser, tmp_path):
    sweep_records(tmp_path)
    write_report(tmp_path)
    console = open_page(browser, tmp_path / "report.html")
    assert [entry for entry in console if entry["level"] == "SEVERE"] == []

    tables = browser.execute_script("return [...document.querySelectorAll('table')].map(table => ({"
                                    "headers: table.querySelectorAll('thead th').length,"
                                    "rows: table.querySelectorAll('tbody tr').length}));")
    assert len(tables) == 3  # scores, memory by component, runs
    assert all(table["headers"] > 0 and table["rows"] > 0 for table in tables), tables
    assert tables[-1]["rows"] == 4  # every run, the failed one too

    images = browser.execute_script("return [...document.images].map(image => [image.alt, image.naturalWidth]);")
    assert {alt for alt, _ in images} == {"score_vs_trainable-m.png", "score_vs_memory-m.png", "memory-m.png",
                                          "ablation-m-rank.png"}
    assert all(width > 0 for _, width in images), images

    browser.set_window_size(1200, 800)  # the width first: the page's height follows from it
    browser.set_window_size(1200, browser.execute_script("return document.documentElement.scrollHeight;") + 200)
    screenshot = tmp_path / "report-screenshot.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000


def test_a_console_error_would_be_caught(browser, tmp_path):
    """The console check above is not vacuous: a page that logs an error shows it as SEVERE."""
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><html><body><script>console.error('broken on purpose')</script></body></html>")
    console = open_page(browser, page)
    assert any(entry["level"] == "SEVERE" and "broken on purpose" in entry["message"] for entry in console), console
