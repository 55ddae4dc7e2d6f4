"""Write the runtime's tokenizer.json (the tokenizers library reads it without transformers)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from .errors import ExportError

EOS_TEXT = "<|endoftext|>"


def build_tokenizer(files: dict[str, Path]) -> Tokenizer:
    """GPT-2 byte-level BPE from tokenizer.json, or from vocab.json + merges.txt as GPT2TokenizerFast does."""
    try:
        if "tokenizer.json" in files:
            return Tokenizer.from_file(str(files["tokenizer.json"]))
        tok = Tokenizer(models.BPE.from_file(str(files["vocab.json"]), str(files["merges.txt"])))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"cannot read the tokenizer files {sorted(map(str, files.values()))} ({e}): "
                          "give GPT-2 vocab.json + merges.txt or a tokenizer.json") from None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(EOS_TEXT, special=True)])
    return tok


def write_tokenizer(tok: Tokenizer, files: dict[str, Path], out: Path, eos_token_id: int, vocab_size: int) -> None:
    """Check `tok` (built from `files` by build_tokenizer) against the model and write it: the checkpoint's own
    tokenizer.json as is, else the one built from vocab.json + merges.txt."""
    if tok.token_to_id(EOS_TEXT) != eos_token_id:
        raise ExportError(f"the tokenizer maps {EOS_TEXT} to {tok.token_to_id(EOS_TEXT)}, the config's eos is "
                          f"{eos_token_id}: give the tokenizer that belongs to this checkpoint")
    if tok.get_vocab_size() > vocab_size:
        raise ExportError(f"the tokenizer has {tok.get_vocab_size()} tokens, the model only {vocab_size}: "
                          "give the tokenizer that belongs to this checkpoint")
    if "tokenizer.json" in files:
        shutil.copy(files["tokenizer.json"], out)
    else:
        tok.save(str(out))
