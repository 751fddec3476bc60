"""The documentation site in a real browser: built offline with `mkdocs build --strict`, then the home page and the
study-file reference opened in headless Chromium at 1280 px. DOCS_SCREENSHOTS=folder keeps a screenshot of each."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built from this tree into a temporary folder (what `make docs` builds into site/)."""
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture
def driver(tmp_path):
    from tests.test_blind import CHROMEDRIVER, CHROMIUM, _browser

    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"{CHROMIUM} and {CHROMEDRIVER} are needed (Debian packages chromium, chromium-driver)")
    pytest.importorskip("selenium")
    d = _browser(tmp_path / "profile", tmp_path / "downloads")
    yield d
    d.quit()


def _no_sideways_scroll(driver) -> None:
    width = driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= 1280, f"the page scrolls sideways: {width} px"


def _screenshot(driver, name: str) -> None:
    folder = os.environ.get("DOCS_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def test_the_home_page_opens_with_its_navigation(site, driver):
    from selenium.webdriver.common.by import By

    driver.get((site / "index.html").as_uri())
    assert driver.title.endswith("cellsynth"), driver.title
    _no_sideways_scroll(driver)
    nav = " ".join(n.get_attribute("textContent") for n in driver.find_elements(By.CSS_SELECTOR, "nav"))  # links and labels
    for section in ("Getting started", "Tutorials", "How-to guides", "Reference", "Explanation"):
        assert section in nav, f"{section!r} missing from the navigation"
    heading = driver.find_element(By.TAG_NAME, "h1")
    assert heading.is_displayed() and heading.rect["y"] < 800 and heading.text.strip()
    images = driver.find_elements(By.CSS_SELECTOR, "article img")
    assert all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", im) for im in images)
    _screenshot(driver, "home.png")


def test_the_study_file_reference_lists_every_section_of_the_schema(site, driver):
    from selenium.webdriver.common.by import By

    from prompts.schema import SECTIONS

    driver.get((site / "reference" / "study-file.html").as_uri())
    _no_sideways_scroll(driver)
    headings = {h.text.strip() for h in driver.find_elements(By.CSS_SELECTOR, "article h3")}
    assert set(SECTIONS) <= headings, f"sections missing from the study-file page: {sorted(set(SECTIONS) - headings)}"
    tables = driver.find_elements(By.CSS_SELECTOR, "article table")
    assert len(tables) >= len(SECTIONS) and tables[0].is_displayed()
    first_rows = tables[0].find_elements(By.CSS_SELECTOR, "tbody tr")
    assert first_rows and first_rows[0].text.split()[0] == "output", first_rows[0].text  # study.output, the first key
    _screenshot(driver, "study-file.png")
