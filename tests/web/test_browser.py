"""The chat site `dialogpt-onnx web` writes, in real headless Chromium with the model running in the page
(onnxruntime-web's WebAssembly build from npm): it loads behind a plain static file server, a turn typed in the
form gets a reply, and greedy chats are the Python runtime's token for token, for the contrib int8 graph and
the portable int8 one. Decode speed in the page is reported (docs/reach.md), never asserted."""

from __future__ import annotations

import functools
import json
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from browser import chromium_driver

from dialogpt_onnx import runtime
from dialogpt_onnx.web.site import make_site

pytestmark = pytest.mark.slow  # npm, two exports and a browser

TURNS = ["Hi! Do you like music?", "Who is your favorite band?", "I like jazz more.", "Have you seen any good movies?"]
GREEDY = {"do_sample": False, "no_repeat_ngram_size": 0, "max_new_tokens": 16}


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: D102 - no access log in the test output
        pass


@pytest.fixture(scope="module")
def driver():
    d = chromium_driver()
    d.set_script_timeout(300)
    yield d
    d.quit()


@pytest.mark.parametrize("name", ["portable-int8", "int8"])
def test_the_page_chats_with_the_model_running_in_it(bundled_exports, npm_dir, tmp_path, driver, name):
    model_dir = bundled_exports[name]
    site = make_site(model_dir, tmp_path / "site", str(npm_dir / "node_modules" / "onnxruntime-web"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        driver.execute_async_script("window.appReady.then(() => arguments[0](1), (e) => arguments[0](String(e)))")
        assert driver.execute_script("return document.getElementById('status').textContent").startswith("ready")
        # a turn typed in the form: its reply appears in the page
        box = driver.find_element("id", "text")
        box.send_keys(TURNS[0] + "\n")
        driver.execute_async_script("""const done = arguments[0], send = document.getElementById('send');
            const t = setInterval(() => { if (!send.disabled) { clearInterval(t); done(1); } }, 50);""")
        bubbles = driver.execute_script("return [...document.querySelectorAll('.msg')].map(b => b.textContent)")
        assert bubbles[0] == TURNS[0] and len(bubbles) == 2 and bubbles[1].strip()
        # greedy turns through the page's own chat: the Python runtime's, token for token
        driver.execute_script(f"window.app.reset({json.dumps(GREEDY)})")
        got = driver.execute_async_script(f"""const done = arguments[0]; (async () => {{
            const out = []; for (const t of {json.dumps(TURNS * 2)}) out.push(await window.app.send(t));
            done(out); }})().catch((e) => done(String(e)));""")
        chat = runtime.load(model_dir).chat(greedy=True, max_new_tokens=16)
        assert got == [chat.send(t) for t in TURNS * 2]
        speed = driver.execute_async_script("""const done = arguments[0]; (async () => {
            const m = window.app.model, p = m.tokenizer.encodeTurn("Do you like movies?");
            await m.generate(p, {max_new_tokens: 4});
            const t0 = performance.now(); const ids = await m.generate(p, {max_new_tokens: 32, min_new_tokens: 32});
            done((performance.now() - t0) / ids.length); })().catch((e) => done(String(e)));""")
        print(f"\n{name}: {speed:.2f} ms per token in headless Chromium (1 thread, wasm)")
    finally:
        server.shutdown()


TRANSFORMERS_PAGE = """<!doctype html><script type="module">
import { AutoModelForCausalLM, Tensor, env } from "./transformers.min.js";
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = new URL("./", location.href).href;
env.backends.onnx.wasm.wasmPaths = new URL("./", location.href).href;
env.backends.onnx.wasm.numThreads = 1;
window.run = async (prompt, n) => {
  const model = await AutoModelForCausalLM.from_pretrained("model", { subfolder: "", model_file_name: "model",
                                                                      dtype: "fp32", device: "wasm" });
  const ids = new Tensor("int64", BigInt64Array.from(prompt, BigInt), [1, prompt.length]);
  const mask = new Tensor("int64", new BigInt64Array(prompt.length).fill(1n), [1, prompt.length]);
  const out = await model.generate({ input_ids: ids, attention_mask: mask, max_new_tokens: n, do_sample: false,
                                     eos_token_id: 50256 });
  return Array.from(out.data, Number).slice(prompt.length);
};
window.ready = true;
</script>"""


@pytest.mark.parametrize("name", ["portable-int8"])
def test_transformers_js_in_chromium_opens_the_export_as_it_is(bundled_exports, npm_dir, tmp_path, driver, name):
    """transformers.js' browser build (with the onnxruntime-web it pins) reads the portable export dir unchanged
    and its greedy generate() gives the Python runtime's tokens. (The contrib int8 graph it cannot load: its
    pinned onnxruntime-web 1.31.0-dev wasm has no GatherBlockQuantized; 1.31.1, which `dialogpt-onnx web`
    ships, has.)"""
    modules = npm_dir / "node_modules"
    dist = modules / "@huggingface" / "transformers" / "dist"
    ort_web = next(d / "dist" for d in (modules / "@huggingface" / "transformers" / "node_modules" / "onnxruntime-web",
                                        modules / "onnxruntime-web") if d.is_dir())
    site = tmp_path / "tjs"
    shutil.copytree(bundled_exports[name], site / "model")
    shutil.copyfile(dist / "transformers.min.js", site / "transformers.min.js")
    for f in ort_web.glob("ort-wasm-simd-threaded*"):
        shutil.copyfile(f, site / f.name)
    (site / "index.html").write_text(TRANSFORMERS_PAGE)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/index.html")
        driver.execute_async_script("""const done = arguments[0];
            const t = setInterval(() => { if (window.ready) { clearInterval(t); done(1); } }, 50);""")
        model = runtime.load(bundled_exports[name])
        for text in TURNS[:2]:
            prompt = model.encode_turn(text)
            got = driver.execute_async_script(
                f"window.run({json.dumps(prompt)}, 24).then(arguments[0], (e) => arguments[0](String(e)))")
            assert got == model.generate(prompt, max_new_tokens=24).ids, got
    finally:
        server.shutdown()
