"""CLI: dialogpt-onnx chat MODEL_DIR [options] | dialogpt-onnx generate MODEL_DIR "text" [options]

Exit codes: 0 done, 2 a user error (one line on stderr), 3 an internal error (a bug: trace shown),
130 interrupted by Ctrl-C. The HTTP server is `dialogpt-onnx serve` (the serving package).

Chat, piped (stdin not a terminal): exactly one output line per input line. An empty input line gives
an empty output line; a line the model cannot take (invalid UTF-8, longer than the context) gives an
empty output line and one `error:` line on stderr, and the chat goes on; line breaks inside a reply are
written as spaces.
Chat, interactive: /reset, /history, /quit; Ctrl-C stops the reply being written (the turn is kept with
what was said), Ctrl-C at the prompt or EOF (Ctrl-D) exits.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import fields
from typing import TYPE_CHECKING, TextIO, cast

from .cli import OneLineParser, finite_float, loading, nonnegative_int, positive_int, run_command, token_bias
from .errors import UsageError
from .sampling import CHAT_DEFAULTS, chat_options

if TYPE_CHECKING:  # imported when a command runs: --help answers without loading onnxruntime
    from .chat import ChatSession
    from .model import DialogModel
    from .results import Generation

# Every character Python's str.splitlines() breaks on: none may reach a piped reply line.
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--max-length", type=positive_int, default=None,
                   help="cap on tokens in context (default: the model's)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the model files at load (~1 s per GB); sizes are still checked")
    p.add_argument("--max-new-tokens", type=nonnegative_int, default=None,
                   help="tokens a reply may have (default: 64)")
    p.add_argument("--min-new-tokens", type=nonnegative_int, default=None,
                   help="no end of turn before this many (default: 0)")
    p.add_argument("--greedy", action="store_true",
                   help="plain greedy decoding (the model card's) instead of the chat defaults: "
                        + _shown(CHAT_DEFAULTS))
    p.add_argument("--do-sample", action="store_true", help="sample (the chat defaults do)")
    # None: not given (the chat defaults decide); a sampling flag turns sampling on
    p.add_argument("--temperature", type=finite_float, default=None, help="sampling temperature (1.0)")
    p.add_argument("--top-k", type=nonnegative_int, default=None, help="sample among the k likeliest (0: all)")
    p.add_argument("--top-p", type=finite_float, default=None, help="sample within this probability mass (1.0)")
    p.add_argument("--repetition-penalty", type=finite_float, default=None, help="1.0 turns it off")
    p.add_argument("--no-repeat-ngram-size", type=nonnegative_int, default=None, help="0 turns it off")
    p.add_argument("--seed", type=nonnegative_int, default=None)
    p.add_argument("--presence-penalty", type=finite_float, default=None,
                   help="OpenAI's: subtracted from the logit of every token already generated, in [-2, 2] "
                        "(default: 0)")
    p.add_argument("--frequency-penalty", type=finite_float, default=None,
                   help="OpenAI's: subtracted once per time a token was generated, in [-2, 2] (default: 0)")
    p.add_argument("--logit-bias", type=token_bias, action="append", default=[], metavar="TOKEN_ID:BIAS",
                   help="add BIAS (in [-100, 100]) to a token's logit; repeatable")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end the reply before this text; repeatable")
    p.add_argument("--rerank", choices=("mmi",), default=None,
                   help="mmi: the best of N sampled candidates by a backward model (needs --backward)")
    p.add_argument("--backward", default=None, help="backward model dir for --rerank mmi")
    p.add_argument("--mmi-candidates", type=positive_int, default=8, help="sampled replies to rerank")
    p.add_argument("--mmi-forward-weight", type=finite_float, default=0.0,
                   help="weight of the forward log p in the score (0: the backward model alone)")


SAMPLING_FLAGS = ("temperature", "top_k", "top_p")


def _shown(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


def _given_options(a: argparse.Namespace) -> dict:
    """The generation options the flags give (nothing for a flag left out)."""
    sampling = [f for f in SAMPLING_FLAGS if getattr(a, f) is not None]
    if a.greedy and (sampling or a.do_sample):
        flag = "--" + (sampling[0] if sampling else "do_sample").replace("_", "-")
        raise UsageError(f"{flag} samples, --greedy does not: drop one of them")
    given = {k: getattr(a, k) for k in ("max_new_tokens", "min_new_tokens", "seed", "presence_penalty",
                                        "frequency_penalty", "stop", *SAMPLING_FLAGS, "repetition_penalty",
                                        "no_repeat_ngram_size", "logit_bias") if getattr(a, k) not in (None, [])}
    if "logit_bias" in given:
        given["logit_bias"] = dict(given["logit_bias"])
    if a.do_sample or sampling:  # a sampling flag without --do-sample samples: never silently ignored
        given["do_sample"] = True
    return given


def _gen_kwargs(a: argparse.Namespace) -> dict:
    """The generation options: the chat defaults (or plain greedy with --greedy) under the flags given."""
    return chat_options(greedy=a.greedy, **{"logit_bias": {}, **_given_options(a)})


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="dialogpt-onnx", description="DialoGPT chat and generation on onnxruntime",
                      examples=("dialogpt-onnx chat models/chat-8x256-int8",
                                "dialogpt-onnx generate models/chat-8x256-int8 \"Hello there\" --greedy",
                                "echo Hello | dialogpt-onnx chat models/chat-8x256-int8 --seed 1"))
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser)
    chat = sub.add_parser("chat", help="interactive chat (or one user turn per stdin line when piped)", examples=(
        "dialogpt-onnx chat models/chat-8x256-int8                     # a REPL: /help lists its commands",
        "dialogpt-onnx chat models/chat-8x256-int8 --seed 1 <<< \"Hi! Do you like music?\"",
        "printf 'Hi!\\nWhat do you do for fun?\\n' | dialogpt-onnx chat models/chat-8x256-int8   # a reply per line",
        "dialogpt-onnx chat models/chat-8x256-int8 --restore chat.npz  # go on with a chat saved by /save"))
    _options(chat)
    chat.add_argument("--verbose", action="store_true", help="after each reply, its tokens and tokens/s on stderr")
    chat.add_argument("--restore", metavar="FILE", help="go on with a chat saved by /save (or ChatSession.save): "
                      "its turns, options and KV cache; flags given override its options")
    chat.add_argument("--max-history-tokens", type=positive_int, default=None,
                      help="tokens of history kept (older turns + the new one), oldest turns dropped first "
                           "(default 128)")
    gen = sub.add_parser("generate", help="print the reply to one text", examples=(
        "dialogpt-onnx generate models/chat-8x256-int8 \"Does money buy happiness?\" --greedy --max-new-tokens 24",
        "dialogpt-onnx generate models/chat-8x256-int8 \"Hello there\" --num-return-sequences 3 --seed 7",
        "dialogpt-onnx generate models/chat-8x256-int8 \"Hello there\" --stop \"?\" --top-logprobs 2"))
    _options(gen)
    gen.add_argument("text")
    gen.add_argument("--num-return-sequences", type=positive_int, default=1,
                     help="N sampled replies, one per line (needs --do-sample)")
    gen.add_argument("--top-logprobs", type=nonnegative_int, default=None, metavar="K",
                     help="print each reply as a JSON line with its tokens' log-probabilities and the top K")
    return p.parse_args(argv)


class _StopFlag:
    """SIGINT while a reply is written: the first asks the reply to stop, a second one exits."""

    def __init__(self) -> None:
        self.set = False

    def __enter__(self) -> _StopFlag:
        self.set = False
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._old)


def _reply(pieces: Iterator[str], out: TextIO, piped: bool) -> tuple[bool, bool]:
    """Write a streamed reply; (wrote anything, stopped by Ctrl-C). Stopping closes the stream, which
    keeps the partial reply as the bot's turn."""
    wrote = False
    with _StopFlag() as stop:
        try:
            for piece in pieces:
                out.write(_LINE_BREAKS.sub(" ", piece) if piped else piece)
                out.flush()
                wrote = True
                if stop.set:
                    break
        finally:
            pieces.close()  # type: ignore[attr-defined]
        return wrote, stop.set


HELP = """Commands:
  /help               this list
  /reset              forget the conversation
  /history            the turns the model still sees (the history budget keeps the latest)
  /set NAME VALUE     a generation option for the next replies, e.g. /set temperature 0.8, /set do_sample
                      true, /set stop ?  (/set alone lists every option; /set NAME default resets one)
  /save FILE          save the chat (turns, options, KV cache): chat --restore FILE goes on with it
  /quit               leave (also Ctrl-D, or Ctrl-C at the prompt)
Ctrl-C during a reply stops it (what was said is kept)."""


def _value(text: str) -> object:
    """A /set value as the option wants it: true/false, a number, or text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _set(session: ChatSession, text: str, out: TextIO) -> None:
    """/set alone: every option's value, marking those set; /set NAME VALUE and /set NAME default: change
    one for the next replies (kept by /save), and say what changed."""
    key, _, raw = text.partition(" ")
    now, start = session.options, session.initial_options
    if not key:
        for f in fields(now):
            value, default = getattr(now, f.name), getattr(start, f.name)
            print(f"  {f.name} = {value!r}" + ("" if value == default else f"   (set; the default is {default!r})"),
                  file=out)
        return
    if key not in {f.name for f in fields(now)}:
        print(f"error: unknown option {key!r}: /set lists them", file=sys.stderr, flush=True)
        return
    value = getattr(start, key) if raw.strip() == "default" else _value(raw.strip())
    try:
        session.set_options(**{key: value})
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return
    was = getattr(now, key)
    note = " (the default)" if value == getattr(start, key) else ""
    print(f"  {key} = {getattr(session.options, key)!r}{note}" + ("" if was != value else " (unchanged)"), file=out)


def _command(text: str, session: ChatSession, out: TextIO) -> bool:
    """An interactive /command; False for /quit."""
    name, _, rest = text.partition(" ")
    if name in ("/quit", "/exit"):
        return False
    if name == "/help":
        print(HELP, file=out)
    elif name == "/reset":
        session.reset()
        print("(history cleared)", file=out)
    elif name == "/history":
        turns = session.history
        for i, turn in enumerate(turns):
            print(f"  {'You' if i % 2 == 0 else 'Bot'}: {turn}", file=out)
        if not turns:
            print("(no history yet)", file=out)
    elif name == "/set":
        _set(session, rest.strip(), out)
    elif name == "/save":
        try:
            if not rest.strip():
                raise UsageError("/save needs a file name: /save chat.npz")
            session.save(rest.strip())
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
        else:
            print(f"(saved to {rest.strip()}: chat --restore {rest.strip()} goes on with it)", file=out)
    else:
        print(f"unknown command {name}: /help lists the commands (a line starting with / is not sent)", file=out)
    out.flush()
    return True


def _repl(session, interactive: bool, verbose: bool = False) -> None:
    out, err = sys.stdout, sys.stderr
    piped = not interactive
    if interactive:
        try:
            import readline  # noqa: F401 - input() gets line editing and history (arrow keys)
        except ImportError:
            pass
        print("Chat with the model. /help lists the commands; Ctrl-C stops a reply.", flush=True)
    while True:
        try:
            line = input(">>> You: " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            if piped:
                out.write("\n")
                out.flush()
            continue
        if interactive and text.startswith("/"):
            if not _command(text, session, out):
                break
            continue
        try:
            pieces = session.stream(text)
        except UsageError as e:  # this line only: say why and go on with the chat
            if piped:
                out.write("\n")
                out.flush()
            print(f"error: {e}", file=err, flush=True)
            continue
        if interactive:
            out.write("Bot: ")
        before = session.stats["generated_tokens"]
        t0 = time.perf_counter()
        wrote, stopped = _reply(pieces, out, piped)
        if interactive and stopped:
            out.write(" (stopped)")
        elif interactive and not wrote:
            out.write("(empty reply: the model ended its turn at once)")
        out.write("\n")
        out.flush()
        if verbose:
            n, seconds = session.stats["generated_tokens"] - before, time.perf_counter() - t0
            print(f"({n} tokens in {seconds:.2f} s: {n / seconds:.1f} tokens/s)", file=err, flush=True)


SERVE_MOVED = ("error: the server is its own command: dialogpt-onnx serve MODEL_DIR [options] "
               "(needs pip install 'dialogpt-onnx[serve]')")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["serve"]:  # one line, without importing the server
        print(SERVE_MOVED, file=sys.stderr)
        return 2
    a = parse(args)
    # Invalid UTF-8 on stdin becomes lone surrogates, refused per line; unencodable output never crashes.
    sys.stdin.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    return run_command(lambda: _run(a))


def _run(a: argparse.Namespace) -> None:
    from .mmi import MMIOptions, MMIReranker
    from .model import load

    if a.backward and not a.rerank:
        raise UsageError("--backward is used by --rerank mmi: add --rerank mmi, or drop --backward")
    if a.rerank and not a.backward:
        raise UsageError("--rerank mmi needs a backward model: add --backward BACKWARD_DIR (an export of "
                         "`dialogpt-onnx train --reverse`)")
    with loading(a.model_dir):
        model = load(a.model_dir, threads=a.threads, max_length=a.max_length, verify=not a.no_verify)
    replier: DialogModel | MMIReranker = model
    if a.rerank:
        with loading(a.backward):
            backward = load(a.backward, threads=a.threads, verify=not a.no_verify)
        replier = MMIReranker(model, backward, MMIOptions(candidates=a.mmi_candidates,
                                                          forward_weight=a.mmi_forward_weight))
    if a.cmd == "generate":
        kw = _gen_kwargs(a)
        if a.num_return_sequences > 1:
            if a.rerank:
                raise UsageError("--num-return-sequences gives N replies; --rerank mmi gives the best of "
                                 "--mmi-candidates: use one of them")
            kw["num_return_sequences"] = a.num_return_sequences
        out = replier.generate(a.text, **kw, top_logprobs=a.top_logprobs)
        for g in cast("list[Generation]", out if isinstance(out, list) else [out]):  # one text: N Generations
            print(g.text if a.top_logprobs is None else json.dumps(_generation_json(model, g)))
        return
    if a.restore:
        session = replier.chat(max_history_tokens=a.max_history_tokens, restore=a.restore, greedy=a.greedy,
                               **_given_options(a))
        defaults = model.options(**chat_options())
        changed = [f"{f.name}={getattr(session.options, f.name)!r}" for f in fields(defaults)
                   if getattr(session.options, f.name) != getattr(defaults, f.name)]
        print(f"(restored {len(session.turns)} turns from {a.restore}; options: "
              f"{', '.join(changed) or 'the chat defaults'})", file=sys.stderr, flush=True)
    else:
        session = replier.chat(max_history_tokens=a.max_history_tokens, **_gen_kwargs(a))
    _repl(session, interactive=sys.stdin.isatty(), verbose=a.verbose)


def _generation_json(model: DialogModel, g: Generation) -> dict:
    def text(i: int) -> str:  # a token's own text (a piece of a character shows as U+FFFD)
        return model.tokenizer.decode([i])

    tokens = [{"id": t.token, "text": text(t.token), "logprob": t.logprob,
               "top": [{"id": i, "text": text(i), "logprob": lp} for i, lp in t.top]} for t in g.token_logprobs or []]
    return {"text": g.text, "finish_reason": g.finish_reason, "logprob": g.logprob, "tokens": tokens}


if __name__ == "__main__":
    sys.exit(main())
