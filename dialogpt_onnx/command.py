"""dialogpt-onnx COMMAND [options]: export, chat, generate, serve, web, bench, train, evaluate.

Each command's module is imported by name only when asked for, so that `dialogpt-onnx chat` never imports
the exporter or the server; every command's outcome becomes its exit code through one runner
(runtime.cli.run_command: 0, 2 a user error or a missing extra, 3 a bug, 128 + N a signal).
"""

from __future__ import annotations

import difflib
import importlib
import sys
from pathlib import Path

from .runtime.cli import VERSION, run_command

# command -> (module whose main(argv) runs it, whether the command name is passed on, what it does)
COMMANDS = {
    "export": ("dialogpt_onnx.export.__main__", False, "a DialoGPT / GPT-2 checkpoint to an optimized ONNX model dir"),
    "chat": ("dialogpt_onnx.runtime.__main__", True,
             "chat with an exported model (a REPL, or one reply per stdin line when piped)"),
    "generate": ("dialogpt_onnx.runtime.__main__", True, "print the reply to one text"),
    "serve": ("dialogpt_onnx.serve.__main__", False, "the OpenAI-compatible server and chat page"),
    "web": ("dialogpt_onnx.web.__main__", False, "a static site that chats with the model running in the page"),
    "cache": ("dialogpt_onnx.runtime.cache_command", False, "this machine's weight cache: its entries, clear"),
    "train": ("dialogpt_onnx.training.__main__", False, "DialoGPT's recipe on a CPU"),
    "evaluate": ("dialogpt_onnx.training.evaluate", False, "held-out reply perplexity of checkpoints"),
    "bench": ("benchmarks.__main__", False,
              "this runtime against PyTorch, Optimum, CTranslate2 and llama.cpp (from a clone of the repository)"),
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
        near = difflib.get_close_matches(args[0], list(COMMANDS), n=1)
        print(f"error: unknown command {args[0]!r}: " + (f"did you mean {near[0]}? " if near else "")
              + f"use one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, keep_name, _ = COMMANDS[args[0]]
    if module.startswith("benchmarks."):
        _find_the_repository()
    # a missing extra while the command's module loads is one line naming the pip install (run_command)
    return run_command(lambda: importlib.import_module(module).main(args if keep_name else args[1:]))


def _find_the_repository() -> None:
    """The benchmark suite is not in the wheel: an install from a clone (pip install -e .) finds it beside
    the package; an installed wheel has none, and the import's one-line error says so."""
    root = Path(__file__).resolve().parents[1]
    if (root / "benchmarks" / "__main__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))


if __name__ == "__main__":
    sys.exit(main())
