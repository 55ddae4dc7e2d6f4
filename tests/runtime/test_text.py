"""The streaming text decoder: incremental (each push decodes a few ids, not the reply), and its pieces
join into what decoding the whole reply gives, for any ids a model may produce."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dialogpt_onnx.corpora import tokenizer_files
from dialogpt_onnx.export.tokenizer import build_tokenizer
from dialogpt_onnx.runtime.text import StreamDecoder

TOKENIZER = build_tokenizer(tokenizer_files())  # GPT-2's byte-level BPE, as every export ships it
# byte tokens (single bytes, many of them halves of characters), common words, EOS
IDS = st.lists(st.one_of(st.integers(0, 255), st.integers(256, 50256)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(IDS)
def test_pieces_join_into_the_whole_decode(ids):
    dec = StreamDecoder(TOKENIZER)
    pieces = [dec.push(t) for t in ids] + [dec.flush()]
    assert "".join(pieces) == TOKENIZER.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p[-1:] for p in pieces[:-1])  # a piece never ends half a character


def test_each_push_decodes_a_window_not_the_reply():
    calls: list[int] = []

    class Counting:
        def decode(self, ids, skip_special_tokens=True):
            calls.append(len(ids))
            return TOKENIZER.decode(ids, skip_special_tokens=skip_special_tokens)

    dec = StreamDecoder(Counting())  # type: ignore[arg-type]
    word = TOKENIZER.encode(" hello", add_special_tokens=False).ids
    for _ in range(500):
        for t in word:
            dec.push(t)
    assert max(calls) <= 2 and sum(calls) <= 2 * 500 * len(word)  # linear in the reply's length
