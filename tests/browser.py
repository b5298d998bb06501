"""Open an HTML file in headless Chromium and report what a reader would see.

Used by the report tests: a page can be valid text and still show broken images or throw console
errors, which only a real browser reveals. Needs Debian's ``chromium`` and ``chromium-driver`` and the
``selenium`` package; selenium-manager is never asked to download anything (the driver and browser
paths are passed explicitly), so the check works offline. Without a browser the ``chromium`` fixture
skips the test, except under CI (``CI`` set), where a silently skipped check would prove nothing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
WINDOW = (1280, 2000)
MAX_HEIGHT = 16000  # cap the full-page screenshot: a runaway page must not produce a gigapixel PNG
TIMEOUT_S = 30


def find_chromium() -> tuple[str, str] | None:
    """``(browser, driver)`` paths, or None when either is missing."""
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = next((p for p in map(shutil.which, DRIVERS) if p), None)
    return (browser, driver) if browser and driver else None


@dataclass
class PageCheck:
    title: str
    images: int
    broken_images: list[str]
    console_errors: list[str]
    screenshot: Path
    text: str
    # Size of the screenshot in device pixels (CSS pixels x devicePixelRatio) after the resize.
    size: tuple[int, int] = field(default=(0, 0))


# An image counts as shown only once loaded with a real width; a 404 or a corrupt file leaves
# naturalWidth at 0. Short data: URIs are abbreviated so a failure message stays readable.
_BROKEN_IMAGES_JS = """
return Array.from(document.images)
  .filter(img => !(img.complete && img.naturalWidth > 0))
  .map(img => img.src.startsWith('data:') ? img.src.slice(0, 40) + '...' : img.src);
"""


def _driver(paths: tuple[str, str]):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = paths
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def check_page(html_path: Path, screenshot: Path, paths: tuple[str, str] | None = None) -> PageCheck:
    """Load ``html_path`` from a file:// URL, wait until it is complete, inspect it, save a screenshot.

    One browser per call: slower than sharing one, but no state (cache, console log) leaks between
    checks.
    """
    from selenium.webdriver.support.ui import WebDriverWait

    paths = paths or find_chromium()
    if paths is None:
        raise RuntimeError("no Chromium found; apt-get install chromium chromium-driver")
    driver = _driver(paths)
    try:
        driver.set_page_load_timeout(TIMEOUT_S)
        driver.get(Path(html_path).resolve().as_uri())
        WebDriverWait(driver, TIMEOUT_S).until(
            lambda d: d.execute_script("return document.readyState") == "complete")
        broken = driver.execute_script(_BROKEN_IMAGES_JS)
        images = driver.execute_script("return document.images.length")
        text = driver.execute_script("return document.body ? document.body.innerText : ''")
        # Grow the window to the page's height, so the screenshot shows all of it (up to a cap).
        # The window's height includes some browser chrome even headless: add that difference.
        height, chrome = driver.execute_script(
            "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
        driver.set_window_size(WINDOW[0], min(height + chrome, MAX_HEIGHT))
        width, height, ratio = driver.execute_script(
            "return [window.innerWidth, window.innerHeight, window.devicePixelRatio]")
        screenshot = Path(screenshot)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(screenshot)):
            raise RuntimeError(f"Chromium could not write the screenshot '{screenshot}'")
        errors = [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        return PageCheck(title=driver.title, images=images, broken_images=broken, console_errors=errors,
                         screenshot=screenshot, text=text, size=(round(width * ratio), round(height * ratio)))
    finally:
        driver.quit()


@pytest.fixture
def chromium() -> tuple[str, str]:
    """The browser and driver paths; skips without them (fails under CI, where skipping hides a gap)."""
    paths = find_chromium()
    missing = []
    if paths is None:
        missing.append("the chromium and chromedriver programs (apt-get install chromium chromium-driver)")
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        message = "browser checks need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{message}; under CI (CI is set) they must run, not be skipped", pytrace=False)
        pytest.skip(message)
    return paths
