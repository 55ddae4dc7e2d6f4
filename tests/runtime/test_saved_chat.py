"""A chat saved to a file and restored replies as the uninterrupted chat, without recomputing its history;
another model's file or a damaged one is refused in one line; a save never writes over a user's file."""

from __future__ import annotations

import hashlib

import pytest

from dialogpt_onnx import runtime

TURNS = ["Hi! Do you like music?", "Who is your favorite band?", "I like jazz more.", "Have you been to a concert?"]


@pytest.mark.parametrize(("variant", "options"), [("fp32", {"greedy": True}), ("int8", {"seed": 5}),
                                                  ("int8", {"greedy": True, "max_new_tokens": 12})])
def test_a_restored_chat_replies_as_the_uninterrupted_one(exported, tmp_path, variant, options):
    model = runtime.load(exported(variant))
    whole = model.chat(max_history_tokens=512, **options)  # a budget no turn passes: nothing is recomputed
    expected = [whole.send(t) for t in TURNS[:2]]
    prefilled_before = whole.stats["prefilled_tokens"]
    expected += [whole.send(t) for t in TURNS[2:]]

    first = model.chat(max_history_tokens=512, **options)
    for t in TURNS[:2]:
        first.send(t)
    first.save(tmp_path / "chat.npz")
    restored = runtime.load(exported(variant)).chat(restore=tmp_path / "chat.npz")  # options come from the file
    assert restored.turns == first.turns and restored.kv_bytes > 0
    assert [restored.send(t) for t in TURNS[2:]] == expected[2:]
    # the history was not recomputed: the restored chat prefilled what the uninterrupted one did at those turns
    assert restored.max_history_tokens == 512 and restored.stats["recomputes"] == whole.stats["recomputes"] == 0
    assert restored.stats["prefilled_tokens"] == whole.stats["prefilled_tokens"] - prefilled_before
    assert restored.stats["prefilled_tokens"] < sum(map(len, restored.turns[:4]))


def test_another_models_or_a_damaged_file_is_refused(exported, tmp_path):
    int8, int4 = runtime.load(exported("int8")), runtime.load(exported("int4"))
    chat = int8.chat(seed=1)
    chat.send(TURNS[0])
    path = tmp_path / "chat.npz"
    chat.save(path)
    with pytest.raises(runtime.UsageError, match="saved from another model"):
        int4.chat(restore=path)
    data = bytearray(path.read_bytes())
    for damaged in (data[: len(data) // 2], data[:-300] + bytes(300)):
        (tmp_path / "bad.npz").write_bytes(bytes(damaged))
        with pytest.raises(runtime.UsageError, match="damaged|not a readable saved chat"):
            int8.chat(restore=tmp_path / "bad.npz")
    with pytest.raises(runtime.UsageError, match="no saved chat"):
        int8.chat(restore=tmp_path / "missing.npz")


def test_a_save_never_replaces_a_file_it_did_not_write(exported, tmp_path):
    model = runtime.load(exported("int8"))
    chat = model.chat(seed=1)
    chat.send(TURNS[0])
    mine = tmp_path / "notes.npz"
    mine.write_text("my notes")
    with pytest.raises(runtime.UsageError, match="is not a chat this project saved"):
        chat.save(mine)
    assert mine.read_text() == "my notes"
    chat.save(tmp_path / "chat.npz")
    before = hashlib.sha256((tmp_path / "chat.npz").read_bytes()).hexdigest()
    chat.send(TURNS[1])
    chat.save(tmp_path / "chat.npz")  # a saved chat is replaced, atomically
    assert hashlib.sha256((tmp_path / "chat.npz").read_bytes()).hexdigest() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.npz", "notes.npz"]
