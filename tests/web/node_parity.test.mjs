// Run by tests/web/test_node.py: the JS runtime (dialogpt_onnx/web/dialogpt.mjs) over onnxruntime-node gives
// the Python runtime's tokens and greedy replies, which the Python side wrote to $EXPECTED.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { test } from "node:test";

import { DialoGPT, SESSION_DEFAULTS } from "../../dialogpt_onnx/web/dialogpt.mjs";

const ort = createRequire(join(process.env.NPM_DIR, "/"))("onnxruntime-node");
const expected = JSON.parse(readFileSync(process.env.EXPECTED, "utf8"));

for (const [variant, dir] of Object.entries(expected.models)) {
  const json = (name) => JSON.parse(readFileSync(join(dir, name), "utf8"));
  const load = () => DialoGPT.load(ort, { model: join(dir, "model.onnx"), manifest: json("manifest.json"),
                                          tokenizer: json("tokenizer.json"), sessionOptions: { intraOpNumThreads: 2 } });

  test(`${variant}: tokens, greedy replies and a greedy chat are the Python runtime's`, async () => {
    const m = await load();
    for (const [text, ids] of expected.tokens) assert.deepEqual(m.tokenizer.encodeTurn(text), ids, text);
    for (const [text, ids] of expected.tokens) assert.equal(m.tokenizer.decode(ids), text);
    const want = expected.replies[variant];
    for (const { prompt, options, ids } of want.generate) assert.deepEqual(await m.generate(prompt, options), ids);
    const chat = m.chat({ do_sample: false, no_repeat_ngram_size: 0, max_new_tokens: 16 });
    for (const [text, reply] of want.chat) {
      let streamed = "";
      const got = await chat.send(text, (piece) => { streamed += piece; });
      assert.equal(got, reply, text);
      assert.equal(streamed, reply);
    }
  });

  test(`${variant}: the chat defaults are the manifest's, the session's spin bound the Python runtime's`, async () => {
    const m = await load();
    assert.deepEqual(m.chat().opts, { ...m.defaults, ...expected.chat_defaults });
    assert.equal(SESSION_DEFAULTS.extra.session.intra_op.spin_duration_us, String(expected.spin_duration_us));
  });
}
