"""Driving the chat page in headless Chromium: what its tests do, and what made its screenshot in docs/
(`python tests/chat_page.py URL OUT.png` against a running `dialogpt-onnx serve`)."""

from __future__ import annotations

import sys
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

TIMEOUT = 60


class Page:
    def __init__(self, driver, url: str) -> None:
        self.d, self.url = driver, url

    def open(self, query: str = "") -> Page:
        self.d.get(f"{self.url}/{query}")
        return self.ready()

    def ready(self) -> Page:
        WebDriverWait(self.d, TIMEOUT).until(lambda d: d.execute_script("return window.appReady === true"))
        return self

    def click(self, css: str, index: int = -1) -> None:
        self.d.find_elements(By.CSS_SELECTOR, css)[index].click()

    def idle(self) -> None:
        """Until no reply is being written (the page enables Send again)."""
        WebDriverWait(self.d, TIMEOUT).until(
            lambda d: d.find_element(By.ID, "send").is_enabled() and not d.find_elements(By.CSS_SELECTOR,
                                                                                         ".bot:not([data-done])"))

    def say(self, text: str) -> str:
        """Types a turn, sends it with Enter, and returns the reply."""
        before = len(self.d.find_elements(By.CSS_SELECTOR, "#log .msg"))
        self.d.find_element(By.ID, "msg").send_keys(text + "\n")
        WebDriverWait(self.d, TIMEOUT).until(  # a reply (the turn and its answer), or the banner saying why not
            lambda d: self.banner() or len(d.find_elements(By.CSS_SELECTOR, "#log .msg")) >= before + 2)
        self.idle()
        return self.texts(".bot")[-1] if self.texts(".bot") else ""

    def texts(self, css: str) -> list[str]:
        return [e.text for e in self.d.find_elements(By.CSS_SELECTOR, f"#log .msg{css} .text")]

    def meta(self) -> str:
        return self.d.find_elements(By.CSS_SELECTOR, ".bot .meta")[-1].text

    def banner(self) -> str:
        b = self.d.find_element(By.ID, "banner")
        return b.text if b.is_displayed() else ""

    def set_option(self, name: str, value: str) -> None:
        if not self.d.find_element(By.ID, "settings").is_displayed():
            self.d.find_element(By.ID, "settings-toggle").click()
        box = self.d.find_element(By.ID, f"opt-{name}")
        box.clear()
        box.send_keys(value)

    def chats(self) -> list[str]:
        return [e.text for e in self.d.find_elements(By.CSS_SELECTOR, "#chats .title")]


def tour(page: Page, shot: Path) -> None:
    """A short chat with a regenerated reply and the settings open, in the dark theme, saved as a PNG."""
    page.d.set_window_size(1280, 1000)
    page.open()
    page.say("Do you like movies?")
    page.say("Which one is your favourite?")
    page.click(".regen")
    page.idle()
    page.d.find_element(By.ID, "theme").click()
    page.d.find_element(By.ID, "theme").click()
    page.set_option("top_k", "40")
    page.d.save_screenshot(str(shot))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from browser import chromium_driver

    driver = chromium_driver()
    try:
        tour(Page(driver, sys.argv[1]), Path(sys.argv[2]))
    finally:
        driver.quit()
