#!/usr/bin/env bash
# Quick start: set up .venv, export the bundled model (models/chat-8x256) to int8, and chat with it.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e ".[dev]"
.venv/bin/python -m export models/chat-8x256 models/chat-8x256-int8 --variant int8 --overwrite
echo
echo "== a scripted exchange (piped: one user turn per line in, one reply per line out) =="
turns=$'Hi! Do you like music?\nWho is your favorite band?\nI like jazz more.'
replies=$(.venv/bin/python -m runtime chat models/chat-8x256-int8 --max-new-tokens 40 --repetition-penalty 1.2 <<<"$turns")
paste -d '\n' <(sed 's/^/You: /' <<<"$turns") <(sed 's/^/Bot: /' <<<"$replies")
if [ -t 0 ]; then
  echo
  echo "== your turn (/reset, /history, /quit) =="
  .venv/bin/python -m runtime chat models/chat-8x256-int8 --repetition-penalty 1.2
fi
