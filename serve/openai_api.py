"""OpenAI's chat-completions request, typed: one parser turns a JSON body into a ChatRequest or a
BadRequest naming the field. Ranges of the generation options are the runtime's (SamplingOptions checks
them at submit); errors come back under OpenAI's field names (`param_of`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from runtime import DialogModel
from runtime.checks import is_integer, is_number

# The runtime's option names -> OpenAI's request fields, for errors the runtime raises.
_FIELDS = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}


def param_of(arg: str | None) -> str | None:
    """The request field a runtime option came from."""
    return _FIELDS.get(arg, arg) if arg else None


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ChatRequest:
    turns: list[tuple[str, str]]  # (role, content), system messages left out
    options: dict[str, Any] = field(default_factory=dict)  # the runtime's generation options
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage

    @classmethod
    def parse(cls, body: object) -> ChatRequest:
        """The one validator of a request body: raises BadRequest naming the field."""
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest(f"stream must be true or false, got {stream!r}", "stream")
        so = body.get("stream_options") or {}
        if not isinstance(so, dict) or not isinstance(so.get("include_usage", False), bool):
            raise BadRequest("stream_options must be an object like {\"include_usage\": true}", "stream_options")
        return cls(_turns(body), _options(body), stream, bool(so.get("include_usage")))


def _turns(body: dict[str, Any]) -> list[tuple[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages must be a non-empty list", "messages")
    turns = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must have a string role and a string content", "messages")
        if m["role"] != "system":  # DialoGPT has no system prompt
            turns.append((m["role"], m["content"]))
    if not turns:
        raise BadRequest("messages hold no user or assistant turn", "messages")
    return turns


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's fields -> the runtime's options. Checked here: only what OpenAI defines differently from the
    runtime (max_tokens >= 1, temperature 0 = greedy) and the fields this server refuses."""
    opts: dict[str, Any] = {}
    mt = body.get("max_tokens", body.get("max_completion_tokens"))
    if mt is not None:
        if not is_integer(mt) or mt < 1:
            raise BadRequest(f"max_tokens must be an integer >= 1, got {mt!r}", "max_tokens")
        opts["max_new_tokens"] = mt
    if body.get("min_tokens") is not None:  # an extension (as vLLM's): no end of turn before this many tokens
        opts["min_new_tokens"] = body["min_tokens"]
    temperature = body.get("temperature")
    if temperature is not None and (not is_number(temperature) or temperature < 0):
        raise BadRequest(f"temperature must be a number >= 0, got {temperature!r}", "temperature")
    if temperature:  # 0 (or omitted) is greedy, as OpenAI's API defines temperature 0
        opts.update(do_sample=True, temperature=temperature)
    for name in ("top_p", "seed"):  # top_p is checked when greedy too; it applies when sampling
        if body.get(name) is not None:
            opts[name] = body[name]
    # OpenAI fields this server does not implement: refused when they ask for something, not ignored
    if body.get("n", 1) != 1:
        raise BadRequest(f"n must be 1 (one choice per request), got {body['n']!r}", "n")
    if body.get("stop") not in (None, [], ""):
        raise BadRequest("stop sequences are not supported: DialoGPT ends its turn itself; use max_tokens", "stop")
    if body.get("logprobs"):
        raise BadRequest("logprobs are not supported here: use the runtime's model.score()", "logprobs")
    return opts


class ReplyTokens:
    """The token ids of recent replies, by their text, so that a client's next request (which sends the
    reply back as text) is rebuilt from the tokens the model produced, not from a re-encoding of the text.

    Why: byte-level BPE does not round-trip a model's output (a reply may spell " movies" as " mov" +
    "ies"; re-encoding gives " movies"), so a re-encoded history diverges from the stored KV at the first
    such token and is prefilled again from there; it also differs from what a ChatSession, which keeps
    ids, feeds the model. With these ids a served chat replies exactly as a ChatSession does. Bounded
    (least recently used out); thread-safe (the server's handlers record and read it).
    """

    def __init__(self, max_replies: int = 4096) -> None:
        self.max_replies = max_replies
        self._ids: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, text: str, ids: list[int]) -> None:
        with self._lock:
            self._ids[text] = tuple(ids)
            self._ids.move_to_end(text)
            while len(self._ids) > self.max_replies:
                self._ids.popitem(last=False)

    def get(self, text: str) -> list[int] | None:
        with self._lock:
            ids = self._ids.get(text)
            if ids is not None:
                self._ids.move_to_end(text)
        return None if ids is None else list(ids)


def dialogue_ids(model: DialogModel, turns: list[tuple[str, str]], replies: ReplyTokens) -> list[int]:
    """DialoGPT's prompt: every turn + EOS; an assistant turn this server wrote is taken as the ids it
    generated (see ReplyTokens), any other turn is encoded as the runtime encodes a turn."""
    ids: list[int] = []
    for role, text in turns:
        known = replies.get(text) if role == "assistant" else None
        ids += model.encode_turn(text) if known is None else known + [model.eos]
    return ids
