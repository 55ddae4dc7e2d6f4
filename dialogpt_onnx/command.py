"""dialogpt-onnx COMMAND [options]: export, chat, generate, serve, bench, train.

Each command is its package's own CLI (`python -m export`, `python -m runtime chat`, ...), loaded by name
only when asked for, so that `dialogpt-onnx chat` never imports the exporter or the server.
"""

from __future__ import annotations

import importlib
import sys

from runtime.cli import VERSION

# command -> (package whose __main__.main runs it, whether the command name is passed on, what it does)
COMMANDS = {
    "export": ("export", False, "a DialoGPT / GPT-2 checkpoint to an optimized ONNX model dir"),
    "chat": ("runtime", True, "chat with an exported model (a REPL, or one reply per stdin line when piped)"),
    "generate": ("runtime", True, "print the reply to one text"),
    "serve": ("serve", False, "the OpenAI-compatible server and chat page"),
    "bench": ("benchmarks", False, "this runtime against PyTorch, Optimum, CTranslate2 and llama.cpp"),
    "train": ("training", False, "DialoGPT's recipe on a CPU"),
}
USAGE = "usage: dialogpt-onnx {" + ",".join(COMMANDS) + "} [options]   (dialogpt-onnx COMMAND --help for each)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("\n".join([USAGE, "", *(f"  {name:<9} {what}" for name, (_, _, what) in COMMANDS.items()), "",
                         "examples:", "  dialogpt-onnx export models/chat-8x256 out/chat-int8 --variant int8",
                         "  dialogpt-onnx chat out/chat-int8",
                         "  dialogpt-onnx serve out/chat-int8 --port 8000"]),
              file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] == "--version":
        print(f"dialogpt-onnx {VERSION}")
        return 0
    if args[0] not in COMMANDS:
        print(f"error: unknown command {args[0]!r}: use one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    package, keep_name, _ = COMMANDS[args[0]]
    cli = importlib.import_module(f"{package}.__main__")
    return int(cli.main(args if keep_name else args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
