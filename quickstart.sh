#!/usr/bin/env bash
# Quick start: set up .venv, export the bundled model (models/chat-8x256) to int8, and chat with it.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e ".[dev]"
.venv/bin/dialogpt-onnx export models/chat-8x256 models/chat-8x256-int8 --variant int8 --overwrite
echo
echo "== a scripted exchange (piped: one user turn per line in, one reply per line out) =="
turns=$'Hi! Do you like music?\nWho is your favorite band?\nI like jazz more.'
replies=$(.venv/bin/dialogpt-onnx chat models/chat-8x256-int8 --max-new-tokens 40 <<<"$turns")
paste -d '\n' <(sed 's/^/You: /' <<<"$turns") <(sed 's/^/Bot: /' <<<"$replies")
echo
echo "== from now on: source .venv/bin/activate (or call .venv/bin/dialogpt-onnx by its path), then =="
echo "   dialogpt-onnx chat models/chat-8x256-int8      # chat in the terminal (/help lists the commands)"
echo "   dialogpt-onnx serve models/chat-8x256-int8     # the chat page and an OpenAI-compatible API on :8000"
if [ -t 0 ]; then
  echo
  echo "== your turn (/help, /reset, /quit) =="
  .venv/bin/dialogpt-onnx chat models/chat-8x256-int8
fi
