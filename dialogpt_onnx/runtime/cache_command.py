"""dialogpt-onnx cache [list | clear]: this machine's weight cache (runtime.weight_cache), its entries, their
sizes and last use, and the cap; `clear` removes the entries this user wrote (nothing else in the dir)."""

from __future__ import annotations

import shutil
import sys
import time

from .cli import OneLineParser, run_command
from .errors import UsageError
from .weight_cache import DEFAULT_CAP_MB, cache_root, cap_bytes, entries, trusted_root


def parse(argv: list[str] | None):  # -> argparse.Namespace
    p = OneLineParser(prog="dialogpt-onnx cache", description=__doc__, examples=(
        "dialogpt-onnx cache                   # each entry: size, last use, the model it packs",
        "dialogpt-onnx cache clear             # remove them all (the next load of each model writes it again)",
        "DIALOGPT_ONNX_CACHE_MB=1000 dialogpt-onnx chat models/chat-8x256-int8   # a smaller cap",
        "DIALOGPT_ONNX_CACHE=off dialogpt-onnx chat models/chat-8x256-int8       # no cache at all"))
    p.add_argument("action", nargs="?", choices=("list", "clear"), default="list")
    return p.parse_args(argv)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


def run(action: str) -> None:
    root = cache_root()
    if root is None:
        print("the weight cache is off (DIALOGPT_ONNX_CACHE=off): every load pre-packs its weights in memory")
        return
    real = trusted_root(root)
    if real is None:
        raise UsageError(f"{root} is not a private directory of this user's: not read (see the warning above)")
    held = entries(real)
    cap = cap_bytes()
    if action == "clear":
        for e in held:
            shutil.rmtree(e.path, ignore_errors=True)
        print(f"removed {len(held)} entries ({sum(e.bytes for e in held) / 1e6:.0f} MB) from {real}")
        return
    now = time.time()
    for e in reversed(held):  # most recently used first
        print(f"{e.bytes / 1e6:8.0f} MB  {_ago(now - e.last_used):>12}  {e.source}  (onnxruntime {e.onnxruntime})  "
              f"{e.path.name}")
    total = sum(e.bytes for e in held)
    where = "the default; DIALOGPT_ONNX_CACHE_MB sets it" if cap == DEFAULT_CAP_MB * 1e6 else "DIALOGPT_ONNX_CACHE_MB"
    print(f"{len(held)} entries, {total / 1e6:.0f} MB of a {cap / 1e6:.0f} MB cap ({where}) in {real}; "
          "`dialogpt-onnx cache clear` removes them")


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    return run_command(lambda: run(a.action))


if __name__ == "__main__":
    sys.exit(main())
