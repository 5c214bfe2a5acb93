"""Headless Chromium from the system's packages (Debian: chromium, chromium-driver),
driven by Selenium. Nothing is downloaded: the driver and the browser are named by path,
so Selenium Manager never runs. Without them a test skips, except under CI (CI=true),
where it fails: CI installs them (.ci/run)."""

import os
import shutil

import pytest

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER_PATHS = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def _first(paths, name):
    found = [p for p in paths if os.path.exists(p)] + (
        [shutil.which(name)] if shutil.which(name) else []
    )
    return found[0] if found else None


def headless_chromium(width: int = 1280, height: int = 860):
    """A Selenium Chrome driver on the system's Chromium; skips (fails under CI) without it."""
    browser = _first(CHROMIUM_PATHS, "chromium")
    driver_path = _first(CHROMEDRIVER_PATHS, "chromedriver")
    missing = [n for n, p in (("chromium", browser), ("chromium-driver", driver_path)) if not p]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        message = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI containers run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--autoplay-policy=no-user-gesture-required",  # the page plays audio on a click
        "--mute-audio",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
