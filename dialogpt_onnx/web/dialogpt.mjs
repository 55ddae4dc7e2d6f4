// DialoGPT chat on any onnxruntime JavaScript build: onnxruntime-node (Node, Electron) or onnxruntime-web
// (the browser). A plain ES module, no build step: the caller passes its `ort`, and the export's files as
// bytes and JSON, so one file serves both. The same defaults as the Python runtime, read from the export's
// manifest (`chat`): top-k 50, no repeated 3-grams, a 128-token history budget, the KV kept across turns.
// Greedy replies are the Python runtime's token for token (tested in Node and headless Chromium); sampled
// replies draw from this module's own seeded generator, not numpy's.
//
// Hand-written: transformers.js' tokenizer splits a typed <|endoftext|> into the EOS id where this runtime keeps
// it as text, and its generate() has neither the history budget nor the KV across turns.

const EOT = "<|endoftext|>";

// -- tokenizer: GPT-2 byte-level BPE from tokenizer.json ------------------------------------------------------
function byteTable() {
  const bs = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  for (let b = 0, n = 0; b < 256; b++) {
    if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
  }
  const toChar = new Array(256), toByte = new Map();
  bs.forEach((b, i) => { toChar[b] = String.fromCodePoint(cs[i]); toByte.set(String.fromCodePoint(cs[i]), b); });
  return { toChar, toByte };
}

const PIECES = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

export class Tokenizer {
  constructor(json) {
    const model = json.model;
    if (!model || model.type !== "BPE") throw new Error("tokenizer.json: a BPE model is needed");
    this.vocab = new Map(Object.entries(model.vocab));
    this.byId = [];
    for (const [tok, id] of this.vocab) this.byId[id] = tok;
    for (const t of json.added_tokens || []) { this.vocab.set(t.content, t.id); this.byId[t.id] = t.content; }
    this.ranks = new Map(model.merges.map((m, i) => [Array.isArray(m) ? m.join(" ") : m, i]));
    this.bytes = byteTable();
    this.cache = new Map();
    this.eos = this.vocab.get(EOT);
  }

  bpe(word) {
    const hit = this.cache.get(word);
    if (hit) return hit;
    let parts = Array.from(word);
    while (parts.length > 1) {
      let best = -1, rank = Infinity;
      for (let i = 0; i < parts.length - 1; i++) {
        const r = this.ranks.get(parts[i] + " " + parts[i + 1]);
        if (r !== undefined && r < rank) { rank = r; best = i; }
      }
      if (best < 0) break;
      const a = parts[best], b = parts[best + 1], merged = [];
      for (let i = 0; i < parts.length; i++) {
        if (i < parts.length - 1 && parts[i] === a && parts[i + 1] === b) { merged.push(a + b); i++; }
        else merged.push(parts[i]);
      }
      parts = merged;
    }
    const ids = parts.map((p) => this.vocab.get(p));
    if (this.cache.size < 50000) this.cache.set(word, ids);
    return ids;
  }

  /** Token ids of a text (special tokens typed in it stay text, as in the Python runtime). */
  encode(text) {
    const out = [];
    const utf8 = new TextEncoder();
    for (const m of text.matchAll(PIECES)) {
      const word = Array.from(utf8.encode(m[0]), (b) => this.bytes.toChar[b]).join("");
      out.push(...this.bpe(word));
    }
    return out;
  }

  /** One user or bot turn: its text's ids and <|endoftext|>. */
  encodeTurn(text) {
    if (typeof text !== "string" || !text.trim()) throw new Error("text must be a non-empty string");
    return [...this.encode(text), this.eos];
  }

  decode(ids) {
    const bytes = [];
    for (const id of ids) {
      if (id === this.eos) continue;
      for (const ch of this.byId[id] ?? "") bytes.push(this.bytes.toByte.get(ch) ?? 0);
    }
    return new TextDecoder().decode(new Uint8Array(bytes));
  }
}

// -- sampling ---------------------------------------------------------------------------------------------
function bannedNgramTokens(tokens, n) {
  if (n <= 0 || tokens.length + 1 < n) return [];
  const start = tokens.length - n + 1, out = [];
  for (let i = 0; i + n - 1 < tokens.length; i++) {
    let same = true;
    for (let j = 0; j < n - 1 && same; j++) same = tokens[i + j] === tokens[start + j];
    if (same) out.push(tokens[i + n - 1]);
  }
  return out;
}

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function argmax(x) {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

function choose(logits, history, generated, o, eos, random) {
  const x = Float32Array.from(logits);
  if (generated < o.min_new_tokens) x[eos] = -Infinity;
  if (o.no_repeat_ngram_size) for (const t of bannedNgramTokens(history, o.no_repeat_ngram_size)) x[t] = -Infinity;
  if (!o.do_sample) return argmax(x);
  for (let i = 0; i < x.length; i++) x[i] /= o.temperature;
  let order = Array.from(x.keys()).sort((a, b) => x[b] - x[a]);
  if (o.top_k > 0) order = order.slice(0, o.top_k);
  const top = x[order[0]];
  let probs = order.map((i) => Math.exp(x[i] - top));
  const sum = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / sum);
  if (o.top_p < 1) {
    let cum = 0, keep = 0;
    while (keep < probs.length && cum < o.top_p) cum += probs[keep++];
    order = order.slice(0, keep);
    probs = probs.slice(0, keep).map((p) => p / cum);
  }
  let r = random(), i = 0;
  while (i < probs.length - 1 && (r -= probs[i]) > 0) i++;
  return order[i];
}

// -- the model --------------------------------------------------------------------------------------------
// What every session starts from; a caller's sessionOptions replace it key by key (their `extra`, this one).
// Idle intra-op threads spin at most 30 µs, as the Python runtime's (runtime/ort_graph.py SPIN_DURATION_US;
// tests/web keep the two equal): onnxruntime's own default spins by iteration count, which slowed decode
// beside busy processes in onnxruntime-node too (benchmarks/studies/contention.py --node, docs/benchmarks.md).
export const SESSION_DEFAULTS = Object.freeze({
  graphOptimizationLevel: "all", extra: { session: { intra_op: { spin_duration_us: "30" } } },
});

export class DialoGPT {
  /** model: the model file's bytes (Uint8Array) or, in Node, its path; manifest, tokenizer: parsed JSON. */
  static async load(ort, { model, manifest, tokenizer, sessionOptions = {} }) {
    const session = await ort.InferenceSession.create(model, { ...SESSION_DEFAULTS, ...sessionOptions });
    return new DialoGPT(ort, session, manifest, new Tokenizer(tokenizer));
  }

  constructor(ort, session, manifest, tokenizer) {
    this.ort = ort;
    this.session = session;
    this.manifest = manifest;
    this.tokenizer = tokenizer;
    this.io = manifest.io;
    this.shape = manifest.model;
    this.eos = manifest.model.eos_token_id;
    this.contextLength = manifest.model.n_positions;
    this.defaults = { ...DEFAULTS, ...(manifest.chat || {}) };
    this.layers = Array.from({ length: this.shape.n_layer }, (_, i) => i);
  }

  /** A KV cache holding no tokens (the presents of each call are fed back as the next pasts). */
  emptyCache() {
    const dims = [1, this.shape.n_head, 0, this.shape.head_dim];
    const empty = () => new this.ort.Tensor("float32", new Float32Array(0), dims);
    return { length: 0, kv: this.layers.map(() => [empty(), empty()]) };
  }

  /** Feed tokens after those the cache holds; returns the last token's logits and the grown cache. */
  async forward(ids, cache) {
    const { Tensor } = this.ort, n = ids.length, total = cache.length + n;
    const io = this.io, feeds = {};
    feeds[io.inputs.input_ids] = new Tensor("int64", BigInt64Array.from(ids, BigInt), [1, n]);
    feeds[io.inputs.attention_mask] = new Tensor("int64", new BigInt64Array(total).fill(1n), [1, total]);
    const pos = BigInt64Array.from({ length: n }, (_, i) => BigInt(cache.length + i));
    feeds[io.inputs.position_ids] = new Tensor("int64", pos, [1, n]);
    this.layers.forEach((i) => {
      feeds[io.past_key.replace("{}", i)] = cache.kv[i][0];
      feeds[io.past_value.replace("{}", i)] = cache.kv[i][1];
    });
    const out = await this.session.run(feeds);
    const logits = out[io.outputs.logits];
    const vocab = this.shape.vocab_size, rows = logits.dims[1];
    const last = logits.data.subarray((rows - 1) * vocab, rows * vocab);
    const kv = this.layers.map((i) => [out[io.present_key.replace("{}", i)], out[io.present_value.replace("{}", i)]]);
    for (const [k, v] of cache.kv) { k.dispose?.(); v.dispose?.(); }
    return { logits: Float32Array.from(last), cache: { length: total, kv } };
  }

  options(given = {}) {
    const o = { ...this.defaults, ...given };
    for (const k of Object.keys(given)) if (!(k in DEFAULTS)) throw new Error(`unknown option ${k}`);
    if (!(o.temperature > 0)) throw new Error("temperature must be > 0");
    return o;
  }

  /** Reply to a prompt (token ids), token by token: onToken(id) is called for each. Returns the reply's ids
   * (ending with <|endoftext|> when the model ended its turn) and the cache holding prompt + reply but its
   * last token (the next call feeds it). */
  async reply(prompt, cache, history, opts, onToken = () => {}) {
    const o = this.options(opts), random = mulberry32(o.seed ?? Math.floor(Math.random() * 2 ** 32));
    let { logits, cache: c } = await this.forward(prompt, cache);
    const ids = [], seen = [...history];
    const room = Math.min(o.max_new_tokens, this.contextLength - c.length);
    for (;;) {
      const t = choose(logits, seen, ids.length, o, this.eos, random);
      ids.push(t); seen.push(t); onToken(t);
      if (t === this.eos || ids.length >= room) break;
      ({ logits, cache: c } = await this.forward([t], c));
    }
    return { ids, cache: c };
  }

  async generate(prompt, opts = {}) {
    return (await this.reply(prompt, this.emptyCache(), prompt, { ...GREEDY, ...opts })).ids;
  }

  chat(opts = {}) {
    return new ChatSession(this, this.options(opts));
  }
}

// The Python runtime's defaults (dialogpt_onnx.runtime: CHAT_DEFAULTS, chat's history budget); an export's
// manifest says them again under "chat", which wins.
export const DEFAULTS = {
  do_sample: true, top_k: 50, top_p: 1.0, temperature: 1.0, no_repeat_ngram_size: 3, min_new_tokens: 0,
  max_new_tokens: 64, max_history_tokens: 128, seed: null,
};
export const GREEDY = { do_sample: false, no_repeat_ngram_size: 0 };

/** A multi-turn chat: every turn ends with <|endoftext|>; the oldest whole turns are dropped to keep the
 * history within max_history_tokens; the KV is kept across turns unless turns were dropped. */
export class ChatSession {
  constructor(model, opts) {
    this.model = model;
    this.opts = opts;
    this.turns = [];
    this.cache = model.emptyCache();
    this.cached = 0; // tokens of the turns (flattened) that the cache holds
  }

  async send(text, onText = () => {}, opts = {}) {
    const o = this.model.options({ ...this.opts, ...opts });
    const user = this.model.tokenizer.encodeTurn(text);
    let dropped = false;
    for (;;) {
      const held = this.turns.reduce((a, t) => a + t.length, 0);
      if (!this.turns.length || (held + user.length <= o.max_history_tokens
          && held + user.length + o.max_new_tokens <= this.model.contextLength)) break;
      this.turns.shift();
      dropped = true;
    }
    if (dropped) { this.cache = this.model.emptyCache(); this.cached = 0; }
    const flat = this.turns.flat();
    const prompt = [...flat.slice(this.cached), ...user];
    const history = [...flat, ...user];
    const ids = [];
    const tok = this.model.tokenizer;
    let said = 0; // characters passed to onText: a piece waits while it ends inside a multi-byte character
    const { ids: reply, cache } = await this.model.reply(prompt, this.cache, history, o, (t) => {
      ids.push(t);
      const now = tok.decode(ids);
      if (now.length > said && !now.endsWith("\uFFFD")) { onText(now.slice(said)); said = now.length; }
    });
    const turn = reply.at(-1) === this.model.eos ? reply : [...reply, this.model.eos];
    this.turns.push(user, turn);
    this.cache = cache;
    this.cached = history.length + reply.length - 1;
    return tok.decode(reply);
  }

  reset() {
    this.turns = [];
    this.cache = this.model.emptyCache();
    this.cached = 0;
  }
}
