"""The OpenAI chat-completions service between the routes and the engine (vLLM's "serving" layer,
llama.cpp's task layer): a request body is admitted (parsed, its tenant and prompt found, one engine row
queued per choice), then answered whole or streamed. Its result objects own their OpenAI form:
`Choice` (one choice's text, log-probabilities and finish reason as its tokens arrive) and `Completion`
(the response and its chunks)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from dialogpt_onnx.runtime import DialogModel
from dialogpt_onnx.runtime.results import FinishReason
from dialogpt_onnx.runtime.text import StopText

from .engine import Engine, EngineClosed, Request
from .metrics import Metrics
from .openai_api import BadRequest, ChatRequest, dialogue_ids, token_logprob_entries
from .prefix_cache import ReplyTokens


class Client(Protocol):
    """What the service asks of an HTTP request while it answers: whether its client went away."""

    async def is_disconnected(self) -> bool: ...


class ClientGone(Exception):
    """The client of a non-streamed request disconnected before its reply was done."""


@dataclass(eq=False)
class Choice:
    """One choice's text and log-probabilities as its tokens arrive: the text cut at a stop string as the
    engine cut the reply (the same StopText), log-probabilities for every token but EOS."""

    model: DialogModel
    req: Request
    text: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0  # tokens received, EOS included
    finish_reason: FinishReason = "length"

    def __post_init__(self) -> None:
        self.stop = StopText(self.model.tokenizer, self.req.opts.stop)

    def push(self, token: int) -> tuple[str, list[dict[str, Any]]]:
        """The text and log-probability entries this token adds."""
        k, self.count = self.count, self.count + 1
        if token == self.model.eos:
            return "", []
        piece = self.stop.push(token)
        self.text.append(piece)
        lp = [token_logprob_entries(self.model, self.req.logprobs[k])] if self.req.opts.top_logprobs is not None \
            else []
        self.logprobs += lp
        return piece, lp

    def finish(self, replies: ReplyTokens, namespace: str | None) -> str:
        """The text held back at the end; records the reply's ids by its text (see ReplyTokens) unless a
        stop string cut it (the text then no longer spells the ids)."""
        tail = self.stop.flush()
        self.text.append(tail)
        if self.stop.matched is None:
            replies.record(namespace, "".join(self.text), self.stop.decoder.ids)  # EOS is never pushed
        self.finish_reason = self.req.finish_reason or "length"
        return tail

    def message(self, index: int, with_logprobs: bool) -> dict[str, Any]:
        """This choice in a chat.completion response."""
        return {"index": index, "message": {"role": "assistant", "content": "".join(self.text)},
                "logprobs": {"content": self.logprobs} if with_logprobs else None,
                "finish_reason": self.finish_reason}


@dataclass(frozen=True)
class Completion:
    """One response's identity and its OpenAI forms: the whole response, or its stream of chunks."""

    model_name: str
    with_logprobs: bool
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def head(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "model": self.model_name}

    def response(self, choices: list[Choice], prompt_tokens: int) -> dict[str, Any]:
        completion = sum(c.count for c in choices)
        return {**self.head, "object": "chat.completion",
                "choices": [c.message(i, self.with_logprobs) for i, c in enumerate(choices)],
                "usage": usage(prompt_tokens, completion)}

    def chunk(self, index: int, delta: dict[str, Any], finish: str | None = None,
              logprobs: list[dict[str, Any]] | None = None) -> str:
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish}
        if self.with_logprobs:
            choice["logprobs"] = {"content": logprobs} if logprobs is not None else None
        return event({**self.head, "object": "chat.completion.chunk", "choices": [choice]})

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> str:
        return event({**self.head, "object": "chat.completion.chunk", "choices": [],
                      "usage": usage(prompt_tokens, completion_tokens)})


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def event(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return "data: " + json.dumps(data) + "\n\n"


def error_event(e: BaseException) -> str:
    return event({"error": {"message": f"generating this reply failed ({type(e).__name__}: {e})",
                            "type": "server_error", "param": None, "code": None}})


@dataclass
class Admitted:
    """A request the engine took: what was asked, its prompt, whose cache it uses, one engine row a choice."""

    chat: ChatRequest
    prompt: list[int]
    namespace: str | None
    rows: list[Request]

    def cancel(self) -> None:
        for r in self.rows:
            r.cancel()


class ChatService:
    """Admits chat requests into the engine and answers them in OpenAI's form."""

    def __init__(self, engine: Engine, model_name: str, metrics: Metrics) -> None:
        self.engine, self.model, self.model_name, self.metrics = engine, engine.model, model_name, metrics

    def admit(self, raw: bytes, key_tenant: str | None) -> Admitted:
        """Parse, check, tokenize and queue a request body (n rows for n choices). Blocking: the routes
        call it in a worker thread, so that a big body never stalls the event loop (other clients' streams).
        Raises BadRequest, the runtime's UsageError / ContextOverflow, EngineFull or EngineClosed."""
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON or not UTF-8, an int of > 4,300 digits, too deep
            raise BadRequest("the request body is not valid JSON (or nests or numbers beyond what this "
                             "server reads)") from None
        # system messages count too: a body of 30,000 of any kind is refused before one is read
        chat = ChatRequest.parse(body, self.model, max_turns=self.model.max_length)
        # a key's requests share its cache (narrowed by a salt); without keys, the salt alone
        tenant = key_tenant if chat.cache_salt is None else f"{key_tenant or ''}/{chat.cache_salt}"
        namespace = self.engine.cache_namespace(tenant)
        prompt = dialogue_ids(self.model, chat.turns, self.engine.replies, namespace)
        admitted = Admitted(chat, prompt, namespace, [])
        try:
            for i in range(chat.n):  # choice i samples with seed + i (runtime.generate.row_seed)
                admitted.rows.append(self.engine.submit(prompt, tenant=tenant, choice=i, sampling=chat.sampling,
                                                        owner=key_tenant))
        except BaseException:
            admitted.cancel()
            raise
        return admitted

    async def answer(self, admitted: Admitted, client: Client) -> dict[str, Any]:
        """The whole chat.completion once every choice is done. Raises EngineClosed, ClientGone (its rows
        are freed), or what failed in the engine for this request."""
        try:
            all_ids = await asyncio.gather(*(_whole_reply(r, client) for r in admitted.rows))
        except BaseException:
            admitted.cancel()
            raise
        finally:
            for r in admitted.rows:
                self.metrics.reply_done(r)
        choices = []
        for r, ids in zip(admitted.rows, all_ids, strict=True):
            choice = Choice(self.model, r)
            for t in ids:
                choice.push(t)
            choice.finish(self.engine.replies, admitted.namespace)
            choices.append(choice)
        return Completion(self.model_name, admitted.chat.logprobs).response(choices, len(admitted.prompt))

    async def stream(self, admitted: Admitted) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format, the n choices' chunks interleaved as their tokens
        come; a client that goes away cancels the rows. With logprobs, one chunk per token carries its entry;
        with stream_options.include_usage, a last chunk carries the usage, as OpenAI sends it."""
        chat, rows = admitted.chat, admitted.rows
        completion = Completion(self.model_name, chat.logprobs)
        loop, ready = asyncio.get_running_loop(), asyncio.Event()
        for r in rows:
            r.listen(lambda: loop.call_soon_threadsafe(ready.set))  # no thread parked per token
        choices = [Choice(self.model, r) for r in rows]
        over = [False] * len(rows)
        try:
            yield "".join(completion.chunk(i, {"role": "assistant", "content": ""}) for i in range(len(rows)))
            while not all(over):
                await ready.wait()
                ready.clear()
                events: list[str] = []  # the tokens that arrived together go out in one write, one event each
                for i, (r, choice) in enumerate(zip(rows, choices, strict=True)):
                    if over[i]:
                        continue
                    try:
                        got = r.poll()
                    except EngineClosed as e:  # the server is shutting down: say so, and end every choice
                        events += [error_event(e)] + [completion.chunk(k, {}, "abort")
                                                      for k in range(len(rows)) if not over[k]]
                        over = [True] * len(rows)
                        break
                    except Exception as e:  # noqa: BLE001 - this choice failed in the engine: say so, end it
                        over[i] = True
                        events.append(error_event(e))
                        continue
                    over[i] = self._chunks(completion, i, choice, got, admitted.namespace, events)
                if events:
                    yield "".join(events)
            if chat.include_usage:
                yield completion.usage_chunk(len(admitted.prompt), sum(c.count for c in choices))
            yield "data: [DONE]\n\n"
        finally:
            for r in rows:
                r.cancel()  # no-op when finished; frees the row when the client disconnected
                self.metrics.reply_done(r)

    def _chunks(self, completion: Completion, i: int, choice: Choice, got: list[int | None],
                namespace: str | None, events: list[str]) -> bool:
        """Choice i's chunks for the tokens that arrived (appended to events); whether the choice is over."""
        for t in got:
            if t is None:
                tail = choice.finish(self.engine.replies, namespace)
                if tail:
                    events.append(completion.chunk(i, {"content": tail}))
                events.append(completion.chunk(i, {}, choice.finish_reason))
                return True
            piece, lp = choice.push(t)
            if piece or lp:
                events.append(completion.chunk(i, {"content": piece}, logprobs=lp or None))
        return False


async def _whole_reply(req: Request, client: Client, check_every: float = 0.25) -> list[int]:
    """A non-streamed reply's token ids, waiting on the engine's callback; a client that disconnects
    meanwhile cancels the request (its row is freed at the next step) instead of leaving it computing."""
    loop, ready = asyncio.get_running_loop(), asyncio.Event()
    req.listen(lambda: loop.call_soon_threadsafe(ready.set))
    ids: list[int] = []
    checked = loop.time()
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ready.wait(), timeout=check_every)
        ready.clear()
        for t in req.poll():
            if t is None:
                return ids
            ids.append(t)
        if loop.time() - checked >= check_every:  # tokens may flow without pause: check on a clock
            checked = loop.time()
            if await client.is_disconnected():
                req.cancel()
                raise ClientGone
