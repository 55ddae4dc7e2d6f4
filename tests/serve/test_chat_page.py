"""The chat page: served with a strict policy and the server's own defaults, and used in a real headless
Chromium (chat, regenerate, edit, settings, conversations kept across a reload, theme, error states)."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from browser import chromium_driver
from chat_page import Page
from processes import live_server
from serving import chat_replies

from dialogpt_onnx import runtime
from dialogpt_onnx.serve.openai_api import OPTION_FIELDS, ChatRequest
from dialogpt_onnx.serve.page import CHAT_PAGE, page_data

pytestmark = pytest.mark.slow  # pytest -m "not slow" leaves it out of the quick loop


def _page_data(html: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="page">(.*?)</script>', html, re.S).group(1))


def test_chat_page_is_served_with_the_servers_defaults(server):
    model, url = server
    r = httpx.get(f"{url}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert not re.search(r"<script[^>]*\ssrc=", r.text) and "https://" not in r.text  # one file, nothing fetched
    data = _page_data(r.text)
    assert data["model"] == "tiny" and data["context"] == model.max_length
    # the defaults the page shows are the ones the server applies: sent back, they change nothing
    omitted = ChatRequest.parse({"messages": [{"role": "user", "content": "hi"}]}, model)
    sent = {k: v for k, v in data["defaults"].items() if v is not None and k != "logprobs"}
    given = ChatRequest.parse({"messages": [{"role": "user", "content": "hi"}], **sent}, model)
    assert given.sampling == omitted.sampling and data["defaults"]["top_k"] == runtime.CHAT_DEFAULTS["top_k"]
    # the page's data is JSON in a data block: no value can close it or inject markup
    assert json.loads(page_data('</script><b>"x"&')) == '</script><b>"x"&' and "<" not in page_data("</script>")


def test_the_page_offers_every_option_the_api_takes():
    fields = set(re.findall(r'\["(\w+)", "(?:number|int|lines|json|secret)"', CHAT_PAGE))
    assert fields - {"api_key"} == OPTION_FIELDS - {"logprobs"}  # logprobs: on with top_logprobs
    assert "api_key" in fields and "sessionStorage" in CHAT_PAGE and "prompt(" not in CHAT_PAGE


@pytest.fixture
def page():
    driver = chromium_driver()
    yield driver
    driver.quit()


def test_chat_regenerate_edit_and_settings_in_a_real_browser(server, page):
    model, url = server
    p = Page(page, url).open("?seed=5")  # the address's options fill the settings
    replies = [p.say("Do you like movies?"), p.say("Which ones?")]
    want = chat_replies(model, ["Do you like movies?", "Which ones?"], **runtime.chat_options(seed=5))
    assert [r.strip() for r in replies] == [w.text.strip() for w in want]  # as a ChatSession's
    assert p.texts(".user") == ["Do you like movies?", "Which ones?"]
    tokens = int(p.meta().split(" tokens")[0])
    assert tokens == len(want[1].ids) and "ms to first token" in p.meta()  # the reply's figures
    # regenerate: a second version of the last reply, and back to the first
    p.set_option("seed", "6")
    p.click(".regen")
    p.idle()
    assert page.find_element("css selector", ".bot:last-of-type .pos").text == "2/2"
    p.click(".prev")
    assert p.texts(".bot")[-1] == replies[1]
    # edit the first turn and send it again: what followed it goes, the new reply follows the new text
    p.set_option("temperature", "0")
    p.set_option("max_tokens", "8")
    p.click(".user .edit", 0)
    box = page.find_element("css selector", ".msg.user textarea")
    box.clear()
    box.send_keys("Hello")
    p.click(".resend")
    p.idle()
    want_greedy = model.generate(model.encode_turn("Hello"), **runtime.chat_options(max_new_tokens=8, do_sample=False))
    assert p.texts(".user") == ["Hello"] and p.texts(".bot")[0].strip() == want_greedy.text.strip()
    # a bad option is refused by the server with its field marked
    p.set_option("top_p", "7")
    p.say("Still there?")
    assert "top_p" in p.banner() and page.find_elements("css selector", "label.bad #opt-top_p")
    p.click("#reset")
    assert page.find_element("id", "opt-top_p").get_attribute("value") == ""


def test_conversations_theme_and_long_chats_survive_a_reload(server, page):
    model, url = server
    p = Page(page, url).open("?max_tokens=4")
    p.say("First chat")
    p.click("#new")
    long_turn = "word " * 600  # two of these pass the 1,024-token context: the page trims and says so
    p.say(long_turn)
    p.say(long_turn)
    assert "2 oldest turns left out" in p.meta() and not p.banner()
    page.find_element("id", "theme").click()
    page.find_element("id", "theme").click()  # auto -> light -> dark
    page.refresh()
    p.ready()
    assert page.execute_script("return document.documentElement.dataset.theme") == "dark"
    title = ("word " * 8).strip()  # a chat is named by its first turn's first 40 characters
    assert p.chats() == [title, "First chat"] and len(p.texts(".user")) == 2
    p.click("#chats .title", 1)  # switch to the older chat: its turn and reply are there
    assert p.texts(".user") == ["First chat"] and len(p.texts(".bot")) == 1
    p.click("#chats li .rename", 1)
    page.find_element("css selector", "#chats li input").send_keys("Renamed\n")  # the old name is selected
    assert p.chats()[1] == "Renamed"
    p.click("#chats li .delete", 1)
    p.click("#chats li .yes")
    assert p.chats() == [title]
    page.set_window_size(390, 800)  # a phone's width: nothing wider than the screen, the list behind ☰
    assert page.execute_script("return document.documentElement.scrollWidth") <= 390
    assert page.find_element("id", "menu").is_displayed()


def test_error_states_say_what_to_do(exported, page):
    model = runtime.load(exported("int8"))
    with live_server(model, {"api_keys": ("k1",)}, max_batch=2, max_queue=4) as (_, url):
        p = Page(page, url).open("?max_tokens=4")
        p.say("Hello")
        assert "needs an API key" in p.banner() and page.find_element("id", "opt-api_key").is_displayed()
        assert p.texts(".user") == ["Hello"] and p.texts(".bot") == []  # the turn is kept, no empty reply
        p.set_option("api_key", "k1")
        p.click("#retry")
        p.idle()
        assert len(p.texts(".bot")) == 1 and not p.banner()
        # a busy server (429): the page waits its Retry-After and tries again by itself
        page.execute_script("""const real = window.fetch; let n = 0;
          window.fetch = (...a) => n++ ? real(...a) : Promise.resolve(new Response(
            JSON.stringify({error: {message: "queue full", type: "rate_limit_error"}}),
            {status: 429, headers: {"Retry-After": "1"}}));""")
        p.say("Again")
        assert len(p.texts(".bot")) == 2 and "busy" not in p.banner()
        assert page.execute_script("return sessionStorage.length") == 1  # the key: this tab only
        assert "k1" not in page.execute_script("return JSON.stringify(localStorage)") and "k1" not in page.current_url
    p.say("Anyone there?")  # the server is gone
    assert "does not answer" in p.banner() and p.texts(".user")[-1] == "Anyone there?"
