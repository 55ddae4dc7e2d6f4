"""CLI: python -m runtime chat MODEL_DIR [options] | python -m runtime generate MODEL_DIR "text" [options]"""

from __future__ import annotations

import argparse
import sys

from .errors import ModelDirError


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    p.add_argument("--max-length", type=int, default=None, help="cap on tokens in context (default: the model's)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--min-new-tokens", type=int, default=0)
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--no-repeat-ngram-size", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)


def _gen_kwargs(a: argparse.Namespace) -> dict:
    return {k: getattr(a, k) for k in ("max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k",
                                       "top_p", "repetition_penalty", "no_repeat_ngram_size", "seed")}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime", description="DialoGPT chat and generation on onnxruntime")
    sub = p.add_subparsers(dest="cmd", required=True)
    chat = sub.add_parser("chat", help="interactive chat (or one user turn per stdin line when piped)")
    _options(chat)
    chat.add_argument("--max-history-tokens", type=int, default=None,
                      help="drop the oldest turns beyond this many tokens (default: the context)")
    gen = sub.add_parser("generate", help="print the reply to one text")
    _options(gen)
    gen.add_argument("text")
    return p.parse_args(argv)


def _repl(session, interactive: bool) -> None:
    out = sys.stdout
    if interactive:
        print("Chat with the model. Commands: /reset, /history, /quit", flush=True)
    while True:
        try:
            line = input(">>> You: " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if interactive and text in ("/quit", "/exit"):
            break
        if interactive and text == "/reset":
            session.reset()
            print("(history cleared)", flush=True)
            continue
        if interactive and text == "/history":
            for i, turn in enumerate(session.history):
                print(f"  {'You' if i % 2 == 0 else 'Bot'}: {turn}", flush=True)
            continue
        if interactive:
            out.write("Bot: ")
        wrote = False
        for piece in session.stream(text):
            out.write(piece)
            out.flush()
            wrote = True
        if interactive and not wrote:
            out.write("(empty reply: the model ended its turn at once)")
        out.write("\n")
        out.flush()


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    try:
        from .model import load

        model = load(a.model_dir, threads=a.threads, max_length=a.max_length)
        if a.cmd == "generate":
            print(model.generate(a.text, **_gen_kwargs(a)).text)
            return 0
        session = model.chat(max_history_tokens=a.max_history_tokens, **_gen_kwargs(a))
        _repl(session, interactive=sys.stdin.isatty())
        return 0
    except (ModelDirError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
