"""Dialogue data: the files the project ships (`data/`, licenses beside them), named in one place, and
readers for every format training takes. A reader returns dialogues as lists of turn texts; turning
them into DialoGPT token sequences (every turn followed by <|endoftext|>) is runtime.text's job.

Formats:
- Topical-Chat JSON: {id: {"content": [{"message": str, "agent": ...}, ...]}}
- JSONL: one {"turns": [str, ...]} object per line
- TSV in the original DialoGPT repo's style: turns separated by " EOS " (tab-separated columns are
  turns too; a leading "0.0 " / "1.0 " weight on a turn is dropped)
- "chitchat": the chitchat-dataset package (MIT, 7,168 conversations); consecutive messages of one
  sender form one turn
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dialogpt_onnx.runtime.errors import UsageError

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
DIALOGPT_CONFIGS = DATA_DIR / "dialogpt-configs"  # {small,medium,large}/config.json, as the original repo
DIALOGPT_TOKENIZER = DATA_DIR / "dialogpt-tokenizer"  # vocab.json + merges.txt
TOPICAL_CHAT = DATA_DIR / "topical-chat"  # valid_freq / valid_rare (training), test_freq (evaluation)
CHITCHAT = "chitchat"


class DataError(UsageError):
    """Unreadable training data; the message names the file (and line) and the fix."""


def tokenizer_files() -> dict[str, Path]:
    return {"vocab.json": DIALOGPT_TOKENIZER / "vocab.json", "merges.txt": DIALOGPT_TOKENIZER / "merges.txt"}


def dialogpt_config(size: str) -> dict:
    """The original DialoGPT config of `size` (small, medium, large): no model_type key."""
    return json.loads((DIALOGPT_CONFIGS / size / "config.json").read_text())


def topical_chat(split: str, limit: int | None = None) -> list[list[str]]:
    """Conversations of a shipped Topical-Chat split (`test_freq`, `valid_freq`, `valid_rare`)."""
    convs = read_topical_chat(TOPICAL_CHAT / f"{split}.json")
    return convs[:limit] if limit is not None else convs


def _clean(turns: list[str]) -> list[str]:
    return [" ".join(t.split()) for t in turns if isinstance(t, str) and t.strip()]


def read_topical_chat(path: Path) -> list[list[str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [_clean([m["message"] for m in c["content"]]) for c in data.values()]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise DataError(f"{path} is not Topical-Chat JSON ({{id: {{content: [{{message}}]}}}}): fix the file "
                        "or give JSONL ({\"turns\": [...]} per line)") from None


def read_jsonl(path: Path) -> list[list[str]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: malformed JSON ({e.msg}): fix the line") from None
            turns = obj.get("turns") if isinstance(obj, dict) else None
            if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
                raise DataError(f"{path}:{n}: expected {{\"turns\": [\"...\", ...]}}: fix the line")
            out.append(_clean(turns))
    return out


_WEIGHT = re.compile(r"^\s*\d+(\.\d+)?\s+")


def read_tsv(path: Path) -> list[list[str]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            turns = [_WEIGHT.sub("", t) for col in line.rstrip("\n").split("\t") for t in col.split(" EOS ")]
            out.append(_clean(turns))
    return out


def read_chitchat() -> list[list[str]]:
    try:
        import chitchat_dataset
    except ImportError:
        raise DataError("--data chitchat needs the chitchat-dataset package: pip install -e \".[train]\"") from None
    data = chitchat_dataset.Dataset()
    return [_clean([" ".join(u["text"] for u in turn) for turn in conv["messages"]]) for conv in data.values()]


def data_licenses(sources: tuple[str, ...] | list[str]) -> dict[str, Path]:
    """License files of the training data, to ship beside a model trained on it: "LICENSE-<name>" -> file.
    A file's license is a LICENSE beside it (as in `data/`); chitchat's is its package's."""
    found: dict[str, Path] = {}
    for source in sources:
        if str(source) == CHITCHAT:
            import importlib.metadata as md

            try:
                dist = md.distribution("chitchat-dataset")
            except md.PackageNotFoundError:
                continue
            for f in dist.files or []:
                if f.name.upper().startswith("LICENSE"):
                    found["LICENSE-chitchat-dataset"] = Path(str(dist.locate_file(f)))
        elif (lic := Path(source).parent / "LICENSE").is_file():
            found[f"LICENSE-{Path(source).resolve().parent.name}"] = lic
    return found


def read_dialogues(source: str | Path) -> list[list[str]]:
    """Dialogues (of at least two turns) from a file or "chitchat"; DataError names what is wrong."""
    if str(source) == CHITCHAT:
        convs = read_chitchat()
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{path} does not exist: give a Topical-Chat .json, a .jsonl, a .tsv, or 'chitchat'")
        try:
            if path.suffix == ".jsonl":
                convs = read_jsonl(path)
            elif path.suffix == ".json":
                convs = read_topical_chat(path)
            elif path.suffix in (".tsv", ".txt"):
                convs = read_tsv(path)
            else:
                raise DataError(f"{path}: unknown format '{path.suffix}': use .json (Topical-Chat), .jsonl or .tsv")
        except UnicodeDecodeError:
            raise DataError(f"{path} is not UTF-8 text: convert it") from None
    convs = [c for c in convs if len(c) >= 2]
    if not convs:
        raise DataError(f"{source} holds no dialogue of two or more turns: check the file")
    return convs
