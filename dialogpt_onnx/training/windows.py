"""DialoGPT's training samples: a dialogue is one token sequence, every turn followed by <|endoftext|>,
cut into windows that start at a turn boundary.

A window holds whole turns up to `length` tokens (two turns that do not fit together are never
predicted from one another: rare with 256-token windows). The next window of a
dialogue starts at the last turn of the previous one, so every turn after the first is predicted at
least once with a turn of context before it. Labels are the inputs, with -100 (no loss) on padding
and, with `mask_first_turn`, on a window's first turn (it has no context in the window, and a chat
model never has to produce an opening line unprompted). Off by default: measured, the first turns'
loss helps more as training signal than it hurts as context-free prediction (docs/training.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = -100  # transformers' and torch's "no loss here" label


@dataclass(frozen=True)
class Window:
    ids: list[int]
    first_turn: int  # tokens of the window's first turn (EOS included)


def dialogue_windows(turns: list[list[int]], length: int) -> list[Window]:
    """Windows of one dialogue; `turns` are token ids, each ending with EOS."""
    out: list[Window] = []
    start = 0
    while start < len(turns) - 1:  # a window needs a turn of context and one to predict
        ids: list[int] = []
        end = start
        while end < len(turns) and len(ids) + len(turns[end]) <= length:
            ids += turns[end]
            end += 1
        if end - start >= 2:
            out.append(Window(ids, len(turns[start])))
        if end >= len(turns):
            break
        start = max(start + 1, end - 1)
    return out


def labels_for(w: Window, mask_first_turn: bool) -> list[int]:
    labels = list(w.ids)
    if mask_first_turn:
        labels[: w.first_turn] = [IGNORE] * w.first_turn
    return labels


class Batches:
    """Windows grouped into batches of similar length (little padding), in an order fixed by the seed
    and the epoch, so a resumed run sees exactly the batches an uninterrupted run would."""

    def __init__(self, windows: list[Window], batch_size: int, mask_first_turn: bool, pad_id: int,
                 seed: int) -> None:
        self.windows = windows
        self.batch_size = batch_size
        self.mask_first_turn = mask_first_turn
        self.pad_id = pad_id
        self.seed = seed

    def __len__(self) -> int:
        return -(-len(self.windows) // self.batch_size)

    def order(self, epoch: int) -> list[np.ndarray]:
        """Batches of window indices for `epoch`: shuffled, sorted by length within chunks of 50 batches,
        then the batches shuffled again."""
        rng = np.random.default_rng([self.seed, epoch])
        idx = rng.permutation(len(self.windows))
        chunk = self.batch_size * 50
        batches = []
        for c in range(0, len(idx), chunk):
            part = sorted(idx[c:c + chunk], key=lambda i: len(self.windows[i].ids))
            batches += [np.array(part[b:b + self.batch_size]) for b in range(0, len(part), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def tensors(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels), right-padded to the longest window of the batch."""
        rows = [self.windows[i] for i in indices]
        width = max(len(w.ids) for w in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        labels = np.full((len(rows), width), IGNORE, dtype=np.int64)
        for r, w in enumerate(rows):
            ids[r, : len(w.ids)] = w.ids
            labels[r, : len(w.ids)] = labels_for(w, self.mask_first_turn)
        return ids, labels
