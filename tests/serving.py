"""What the server's tests share: a chat's messages, and a chat's replies as a ChatSession keeps them."""

from __future__ import annotations

from dataclasses import dataclass

MESSAGES = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "Do you like movies?"},
            {"role": "assistant", "content": "Yes, I love them."}, {"role": "user", "content": "Which ones?"}]


@dataclass
class Turn:
    prompt: list[int]
    ids: list[int]
    text: str


def chat_replies(model, user_turns: list[str], **options) -> list[Turn]:
    """A chat as a ChatSession keeps it: the history holds the ids the model generated."""
    history: list[int] = []
    out = []
    for u in user_turns:
        history += model.encode_turn(u)
        g = model.generate(history, **options)
        out.append(Turn(list(history), g.ids, g.text))
        history += g.ids if g.ids[-1:] == [model.eos] else g.ids + [model.eos]
    return out
