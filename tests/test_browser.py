"""A new user's view of a study in the MLflow UI: a real study store, ``mlflow server`` (stopped by PID), and
Debian's headless Chromium driven by Selenium through Debian's chromedriver (given by path, so Selenium Manager
never downloads a driver).

Set ``HARDTRUTHS_SCREENSHOT=docs/mlflow-runs.png`` to save the runs table (filtered to one regime, grouped by
selector) as the README's picture.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import ray
from mlflow.tracking import MlflowClient

from servers import MlflowServer, sqlite_uri
from study.scaling import main
from study.runs.tracking import default_tracking_uri

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
STUDY = ["--space", "smoke", "--selectors", "random,herding,full", "--ipc", "1,5", "--regimes", "hl,sl_kd",
         "--budgets", "60", "--seeds", "2", "--no-report"]
LOAD_S = 240  # the UI's first load on two busy cores takes a minute or more

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"),
]


@pytest.fixture(scope="module")
def study_store(tmp_path_factory, cache_dir):
    ray.init(num_cpus=2, log_to_driver=False, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    try:
        out = tmp_path_factory.mktemp("browser") / "study"
        assert main(STUDY + ["--out", str(out), "--cache-dir", str(cache_dir)]) == 0
    finally:
        ray.shutdown()
    return out


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=2400,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def wait_text(driver, needle: str, timeout: float = LOAD_S) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, 0.5).until(lambda d: needle in page_text(d))
    return page_text(driver)


def click_text(driver, text: str, roles: str = "") -> None:
    """Click the innermost visible element whose text is ``text`` (the UI's buttons and menu entries)."""
    from selenium.webdriver.common.by import By

    found = [e for e in driver.find_elements(By.XPATH, f"//*[{roles or 'true()'}][normalize-space(.)='{text}']")
             if e.is_displayed()]
    assert found, f"no visible {text!r} in the page"
    found[-1].click()


def test_runs_table_shows_trials_accuracy_and_datasets(study_store, browser, tmp_path):
    started = time.perf_counter()
    client = MlflowClient(default_tracking_uri(study_store))
    experiment = client.get_experiment_by_name("hardtruths").experiment_id
    trials = client.search_runs([experiment], "tags.`hardtruths.kind` = 'trial' and tags.regime = 'hl'")
    assert trials and all(r.info.status == "FINISHED" for r in trials)
    server = MlflowServer(sqlite_uri(Path(study_store) / "mlflow.db"), tmp_path / "server").start()
    try:
        query = quote("tags.regime = 'hl'")
        order = quote("metrics.`test_acc_mean`")
        browser.get(f"{server.uri}/#/experiments/{experiment}/runs?searchFilter={query}"
                    f"&orderByKey={order}&orderByAsc=false")
        wait_text(browser, "matching runs")
        wait_text(browser, "Training runs", 60)  # the model-training runs view, not the GenAI overview
        click_text(browser, "Group by", "self::button")
        click_text(browser, "selector")
        best = max(trials, key=lambda r: r.data.metrics["test_acc_mean"])
        text = wait_text(browser, best.info.run_name, 60)
        for run in trials:
            assert run.info.run_name in text, f"child run {run.info.run_name} not in the table"
        assert "test_acc_mean" in text
        assert "digits" in text, "the Datasets column names the training data"
        shot = os.environ.get("HARDTRUTHS_SCREENSHOT")
        if shot:
            time.sleep(2)
            browser.save_screenshot(str(tmp_path / "shot.png"))
            shutil.copy(tmp_path / "shot.png", shot)
    finally:
        stopped = server.stop()
    assert stopped
    print(f"browser test {time.perf_counter() - started:.0f} s")
