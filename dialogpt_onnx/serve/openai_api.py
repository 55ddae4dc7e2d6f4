"""OpenAI's chat-completions request, typed at the edge: one parser turns a JSON body into a ChatRequest
(its generation options a checked SamplingOptions) or a BadRequest naming the field. Ranges of the
generation options are the runtime's (SamplingOptions checks them); errors come back under OpenAI's field
names (`param_of`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from dialogpt_onnx.runtime import DialogModel
from dialogpt_onnx.runtime.checks import is_integer, is_number
from dialogpt_onnx.runtime.errors import UsageError
from dialogpt_onnx.runtime.results import TokenLogprob
from dialogpt_onnx.runtime.sampling import SamplingOptions, chat_options
from dialogpt_onnx.runtime.text import token_bytes

from .prefix_cache import ReplyTokens

# The runtime's option names -> OpenAI's request fields, for errors the runtime raises.
_FIELDS = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}


def param_of(arg: str | None) -> str | None:
    """The request field a runtime option came from."""
    return _FIELDS.get(arg, arg) if arg else None


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


# Request fields: each is applied, or refused with a 400 naming it (never silently ignored).
APPLIED = {"messages", "max_tokens", "max_completion_tokens", "min_tokens", "temperature", "top_p", "top_k",
           "repetition_penalty", "no_repeat_ngram_size", "presence_penalty", "frequency_penalty", "logit_bias",
           "stop", "seed", "n", "logprobs", "top_logprobs", "stream", "stream_options", "cache_salt"}
INFORMATIVE = {"model", "user"}  # OpenAI's: name the model / the end user; nothing to apply
# Refused unless they ask for nothing (their neutral value): DialoGPT has no tools and writes only text.
NEUTRAL = {"response_format": (None, {"type": "text"}), "tools": (None, []), "tool_choice": (None, "none"),
           "functions": (None, []), "function_call": (None, "none")}
# Roles: DialoGPT has turns (user, assistant) and no system prompt; system and developer messages are left out.
TURN_ROLES, SKIPPED_ROLES = ("user", "assistant"), ("system", "developer")
MAX_STOPS = 4  # OpenAI's bound
MAX_CHOICES = 8  # n: each choice is a row of the engine's batch


@dataclass(frozen=True)
class ChatRequest:
    turns: list[tuple[str, str]]  # (role, content), system and developer messages left out
    sampling: SamplingOptions = field(default_factory=SamplingOptions)  # the runtime's, checked
    n: int = 1  # choices: each its own row; choice i samples with seed + i
    logprobs: bool = False
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    # vLLM's field: requests with the same salt may reuse each other's cached KV; without one, none is reused
    cache_salt: str | None = None

    @classmethod
    def parse(cls, body: object, model: DialogModel, max_turns: int | None = None) -> ChatRequest:
        """The one validator of a request body: raises BadRequest naming the field. max_turns: more messages
        than this are refused before any is read (the model's context: each turn takes a token at least).
        The generation options are checked by the runtime against `model` (its vocabulary)."""
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        for name, value in body.items():
            if name in APPLIED or name in INFORMATIVE:
                continue
            if name not in NEUTRAL:
                raise BadRequest(f"unknown field {name!r}: this server applies {sorted(APPLIED)}", name)
            if value not in NEUTRAL[name]:
                raise BadRequest(f"{name} is not supported: DialoGPT writes plain text and calls no tools; "
                                 "leave it out", name)
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest(f"stream must be true or false, got {stream!r}", "stream")
        so = body.get("stream_options") or {}
        if not isinstance(so, dict) or not isinstance(so.get("include_usage", False), bool):
            raise BadRequest("stream_options must be an object like {\"include_usage\": true}", "stream_options")
        salt = body.get("cache_salt")
        if salt is not None and (not isinstance(salt, str) or not 0 < len(salt) <= 256 or not _utf8(salt)):
            raise BadRequest("cache_salt must be a string of 1 to 256 characters (one per user or chat)", "cache_salt")
        options, n = _options(body), _choices(body)
        if n > 1 and not options.get("do_sample"):
            raise BadRequest("n > 1 needs sampling (temperature > 0): greedy replies are all the same", "n")
        turns = _turns(body, max_turns)
        try:
            sampling = model.options(**options)
        except UsageError as e:  # the runtime's checks: options out of range, under OpenAI's field names
            raise BadRequest(str(e), param_of(e.arg)) from None
        return cls(turns, sampling, n, sampling.top_logprobs is not None, stream, bool(so.get("include_usage")), salt)


def _utf8(text: str) -> bool:
    """Whether a string is text (JSON's "\\ud800" decodes to a lone surrogate, which no encoder takes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _content(m: dict[str, Any], i: int) -> str:
    """A message's text: a string, or OpenAI's list of parts, whose text parts are joined."""
    content = m.get("content")
    if isinstance(content, str):
        return content
    if content is None and m.get("role") == "assistant":  # OpenAI's: an assistant turn may carry no text
        return ""
    if isinstance(content, list) and content and all(isinstance(p, dict) for p in content):
        kinds = {p.get("type") for p in content}
        if kinds != {"text"} or not all(isinstance(p.get("text"), str) for p in content):
            raise BadRequest(f"messages[{i}].content: only text parts are supported, got types "
                             f"{sorted(map(str, kinds))}", "messages")
        return "".join(p["text"] for p in content)
    raise BadRequest(f"messages[{i}].content must be a string or a list of text parts", "messages")


def _turns(body: dict[str, Any], max_turns: int | None) -> list[tuple[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages must be a non-empty list", "messages")
    if max_turns is not None and len(msgs) > max_turns:
        raise BadRequest(f"messages hold {len(msgs)} messages: more than the model's context of {max_turns} "
                         "tokens (each turn takes one at least); send the recent turns only", "messages",
                         "context_length_exceeded")
    turns = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be an object with a string role", "messages")
        role = m["role"]
        if role not in TURN_ROLES + SKIPPED_ROLES:
            raise BadRequest(f"messages[{i}].role {role!r} is not one of {', '.join(TURN_ROLES + SKIPPED_ROLES)}",
                             "messages")
        text = _content(m, i)
        if role in TURN_ROLES:
            turns.append((role, text))
    if not turns:
        raise BadRequest("messages hold no user or assistant turn", "messages")
    return turns


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's fields -> the runtime's options. Checked here: only what OpenAI defines differently from the
    runtime (max_tokens >= 1, temperature 0 = greedy, logit_bias keys, stop's list); the runtime checks the
    rest at submit."""
    opts: dict[str, Any] = chat_options()  # what a field leaves out is the chat defaults', as on every path
    for name in ("max_tokens", "max_completion_tokens"):  # the newer name wins; null means "not given"
        mt = body.get(name)
        if mt is not None:
            if not is_integer(mt) or mt < 1:
                raise BadRequest(f"{name} must be an integer >= 1, got {mt!r}", name)
            opts["max_new_tokens"] = mt
    if body.get("min_tokens") is not None:  # an extension (as vLLM's): no end of turn before this many tokens
        opts["min_new_tokens"] = body["min_tokens"]
    temperature = body.get("temperature")
    if temperature is not None and (not is_number(temperature) or temperature < 0):
        raise BadRequest(f"temperature must be a number >= 0, got {temperature!r}", "temperature")
    if temperature == 0:  # greedy, as OpenAI's API defines temperature 0
        opts["do_sample"] = False
    elif temperature is not None:
        opts.update(do_sample=True, temperature=temperature)
    # top_p and top_k are checked when greedy too, and apply when sampling; repetition_penalty: vLLM's extension
    for name in ("top_p", "top_k", "repetition_penalty", "no_repeat_ngram_size", "seed", "presence_penalty",
                 "frequency_penalty"):
        if body.get(name) is not None:
            opts[name] = body[name]
    if body.get("logit_bias") is not None:
        opts["logit_bias"] = _logit_bias(body["logit_bias"])
    if body.get("stop") is not None:
        opts["stop"] = _stops(body["stop"])
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise BadRequest(f"logprobs must be true or false, got {logprobs!r}", "logprobs")
    if top is not None and not logprobs:
        raise BadRequest("top_logprobs needs logprobs: true", "top_logprobs")
    if logprobs:
        opts["top_logprobs"] = 0 if top is None else top  # the runtime checks its range
    return opts


# The generation fields a client sets (the rest are the request's own: its messages, stream, cache key).
OPTION_FIELDS = APPLIED - {"messages", "stream", "stream_options", "cache_salt", "max_completion_tokens"}


def field_defaults(model: DialogModel) -> dict[str, Any]:
    """What the server applies for each generation field a request leaves out, under OpenAI's names (the
    chat page shows these as its defaults; a request sending them back gets the same options)."""
    o = model.options(**chat_options())
    return {"max_tokens": o.max_new_tokens, "min_tokens": o.min_new_tokens,
            "temperature": o.temperature if o.do_sample else 0, "top_k": o.top_k, "top_p": o.top_p,
            "seed": o.seed, "n": 1, "repetition_penalty": o.repetition_penalty,
            "no_repeat_ngram_size": o.no_repeat_ngram_size, "presence_penalty": o.presence_penalty,
            "frequency_penalty": o.frequency_penalty, "stop": list(o.stop), "logit_bias": dict(o.logit_bias),
            "logprobs": o.top_logprobs is not None, "top_logprobs": o.top_logprobs}


def _logit_bias(bias: object) -> dict[int, Any]:
    """OpenAI's logit_bias: token ids as JSON object keys (strings) -> bias; the runtime checks the values."""
    if not isinstance(bias, dict) or not all(isinstance(k, str) and k.isascii() and k.isdigit() and len(k) < 10
                                             for k in bias):  # isascii: "²" is a digit to str.isdigit, not to int()
        raise BadRequest("logit_bias must map token ids (as strings, e.g. \"50256\") to numbers in [-100, 100]",
                         "logit_bias")
    return {int(k): v for k, v in bias.items()}


def _stops(stop: object) -> list[str]:
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(x, str) and x for x in stops):
        raise BadRequest(f"stop must be a non-empty string or a list of up to {MAX_STOPS} of them", "stop")
    return stops


def _choices(body: dict[str, Any]) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if not is_integer(n) or not 1 <= n <= MAX_CHOICES:
        raise BadRequest(f"n must be an integer in [1, {MAX_CHOICES}], got {n!r}", "n")
    return int(n)


def token_logprob_entries(model: DialogModel, lp: TokenLogprob) -> dict[str, Any]:
    """One token of OpenAI's `logprobs.content`: its text, bytes and log-probability, and the top ones'."""
    def entry(token: int, logprob: float) -> dict[str, Any]:
        raw = token_bytes(model.tokenizer, token)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return {**entry(lp.token, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}


def dialogue_ids(model: DialogModel, turns: list[tuple[str, str]], replies: ReplyTokens,
                 namespace: str | None) -> list[int]:
    """DialoGPT's prompt: every turn + EOS; an assistant turn this server wrote is taken as the ids it
    generated (see ReplyTokens), any other turn is encoded as the runtime encodes a turn. A history that
    cannot fit the context is refused before it is tokenized (each turn is at least its EOS, each token at
    most the vocabulary's longest token); the rest is tokenized in one call that releases the GIL, so that a long
    request never stalls the other clients' streams."""
    limit = model.max_length
    if len(turns) > limit:
        raise BadRequest(f"messages hold {len(turns)} turns: more than the model's context of {limit} tokens "
                         "(each turn takes one at least); send the recent turns only", "messages",
                         "context_length_exceeded")
    known: list[list[int] | None] = []
    for role, text in turns:
        ids = replies.get(namespace, text) if role == "assistant" else None
        known.append([] if ids is None and role == "assistant" and not text else ids)  # content null: EOS alone
    new = [text for (_, text), k in zip(turns, known, strict=True) if k is None]
    longest = _longest_token_bytes(model)
    at_least = len(turns) + sum(-(-len(t.encode("utf-8", "replace")) // longest) for t in new)
    if at_least > limit:
        raise BadRequest(f"messages hold at least {at_least} tokens: more than the model's context of {limit}; "
                         "send the recent turns only", "messages", "context_length_exceeded")
    encoded = iter(model.encode_turns(new))
    return [t for k in known for t in (next(encoded) if k is None else k + [model.eos])]


@functools.cache
def _longest_token_bytes(model: DialogModel) -> int:
    """Bytes the longest token spells (128 for GPT-2's vocabulary: byte-level tokens, a character a byte)."""
    return max(map(len, model.tokenizer.get_vocab()))
