"""Headless Chromium for the tests (Debian's chromium + chromium-driver; CI installs them)."""

from __future__ import annotations

import os
import shutil

import pytest


def chromium_driver():
    """A headless Chromium WebDriver; skips where there is none, fails where CI requires one."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        if os.environ.get("DIALOGPT_REQUIRE_BROWSER"):  # CI installs them: there a missing browser is a failure
            pytest.fail("chromium and chromedriver are required (apt-get install chromium chromium-driver)")
        pytest.skip("no chromium + chromedriver here (apt-get install chromium chromium-driver); CI runs this")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)
