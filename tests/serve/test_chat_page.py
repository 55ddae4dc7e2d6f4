"""The chat page: served with a strict policy, and streaming a reply in a real headless Chromium."""

from __future__ import annotations

import json

import httpx
import pytest
from browser import chromium_driver
from serving import chat_replies

from dialogpt_onnx import runtime

pytestmark = pytest.mark.slow  # pytest -m "not slow" leaves it out of the quick loop


def test_chat_page_is_served(server):
    _, url = server
    r = httpx.get(f"{url}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in r.text and 'id="model">"tiny"</script>' in r.text and "stream: true" in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    # the page's data is JSON in a data block: no value can close it or inject markup
    from dialogpt_onnx.serve.page import page_data as _page_data

    assert json.loads(_page_data('</script><b>"x"&')) == '</script><b>"x"&' and "<" not in _page_data("</script>")


def test_chat_page_streams_a_reply_in_a_real_browser(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model, url = server
    driver = chromium_driver()
    try:
        driver.get(f"{url}/?seed=5")  # the page sends the address's decoding options
        box = driver.find_element(By.ID, "msg")
        for turn in ("Do you like movies?", "Which ones?"):
            box.send_keys(turn)
            driver.find_element(By.ID, "send").click()
            WebDriverWait(driver, 60).until(
                lambda d, n=turn: len(d.find_elements(By.CSS_SELECTOR, ".bot[data-done='1']"))
                == (1 if n.startswith("Do") else 2))
        bots = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".bot")]
        users = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".user")]
        name = driver.find_element(By.ID, "name").text

        def reply(text: str, n: int) -> str:
            driver.find_element(By.ID, "msg").send_keys(text)
            driver.find_element(By.ID, "send").click()
            WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".bot[data-done='1']")) == n)
            return driver.find_elements(By.CSS_SELECTOR, ".bot")[-1].text

        driver.find_element(By.ID, "new").click()  # a new chat: nothing of the old one is shown or sent
        cleared = driver.find_elements(By.CSS_SELECTOR, "#log div")
        driver.find_element(By.TAG_NAME, "summary").click()
        for field, value in (("temperature", "0"), ("max_tokens", "8")):  # settings: greedy, 8 tokens
            driver.find_element(By.ID, field).clear()
            driver.find_element(By.ID, field).send_keys(value)
        greedy = reply("Hello", 1)
        long_turn = "word " * 600  # two of these pass the 1,024-token context
        long_replies = [reply(long_turn, 2), reply(long_turn, 3)]
        errors = driver.find_elements(By.CSS_SELECTOR, ".bot.note")
        driver.set_window_size(375, 800)  # a phone's width: nothing wider than the screen
        width = driver.execute_script("return document.documentElement.scrollWidth")
    finally:
        driver.quit()
    assert users == ["Do you like movies?", "Which ones?"] and name == "tiny"
    want = chat_replies(model, ["Do you like movies?", "Which ones?"],
                        **runtime.chat_options(max_new_tokens=64, seed=5))
    assert [b.strip() for b in bots] == [w.text.strip() for w in want]  # the streamed text, as a ChatSession's
    assert cleared == []
    prompt = model.encode_turn("Hello")
    want_greedy = model.generate(prompt, **runtime.chat_options(max_new_tokens=8, do_sample=False))
    assert greedy.strip() == want_greedy.text.strip()
    assert 2 * len(model.encode_turn(long_turn)) > model.max_length  # the second could be sent only trimmed
    assert all(r and not r.startswith("error") for r in long_replies) and not errors  # the oldest turns went
    assert width <= 375
