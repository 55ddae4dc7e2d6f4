// Run by tests/web/test_node.py: transformers.js from npm opens each export dir as it is (subfolder "",
// model_file_name "model") and its greedy generate() gives the Python runtime's tokens.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { test } from "node:test";

const require = createRequire(join(process.env.NPM_DIR, "/"));
const { AutoModelForCausalLM, AutoTokenizer, Tensor, env } = await import(
  pathToFileURL(require.resolve("@huggingface/transformers")).href);
env.allowRemoteModels = false;
env.localModelPath = "/";
const expected = JSON.parse(readFileSync(process.env.EXPECTED, "utf8"));

for (const [variant, dir] of Object.entries(expected.models)) {
  test(`${variant}: transformers.js greedy replies are the Python runtime's`, async () => {
    const tokenizer = await AutoTokenizer.from_pretrained(dir);
    const model = await AutoModelForCausalLM.from_pretrained(dir, { subfolder: "", model_file_name: "model",
                                                                   dtype: "fp32", device: "cpu" });
    for (const [text, ids] of expected.tokens.slice(0, 2)) {  // plain texts: the same ids
      assert.deepEqual(Array.from(tokenizer(text).input_ids.data, Number), ids.slice(0, -1), text);
    }
    for (const { prompt, options, ids } of expected.replies[variant].generate) {
      if (options.no_repeat_ngram_size) continue;
      const input = new Tensor("int64", BigInt64Array.from(prompt, BigInt), [1, prompt.length]);
      const out = await model.generate({ input_ids: input, attention_mask: new Tensor("int64",
        new BigInt64Array(prompt.length).fill(1n), [1, prompt.length]), max_new_tokens: options.max_new_tokens,
        do_sample: false, eos_token_id: 50256 });
      assert.deepEqual(Array.from(out.data, Number).slice(prompt.length), ids);
    }
    await model.dispose();
  });
}
