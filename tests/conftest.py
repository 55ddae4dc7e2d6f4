from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import torch
from checkpoints import fp16_rounded, save_hf, save_original, tiny_model

from dialogpt_onnx.corpora import topical_chat
from dialogpt_onnx.export import ExportOptions, export_model

# Loads write this machine's weight cache (runtime.weight_cache): into a directory of the test run's own,
# shared by the CLIs and servers the tests start, never the user's ~/.cache.
if not os.environ.get("DIALOGPT_TESTS_OWN_CACHE"):
    _cache = tempfile.mkdtemp(prefix="dialogpt-onnx-test-cache-")
    os.environ["DIALOGPT_ONNX_CACHE"] = _cache
    os.environ["DIALOGPT_TESTS_OWN_CACHE"] = "1"
    atexit.register(shutil.rmtree, _cache, True)

# The Ctrl-C tests send SIGINT to this process and to CLIs it starts. A shell that starts a job in the
# background (`cmd &`, nohup) makes it ignore SIGINT, and children inherit that: give SIGINT back its
# Python handler so the tests see what a user's terminal would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny() -> torch.nn.Module:
    return tiny_model()


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory, tiny) -> Path:
    return save_hf(tiny, tmp_path_factory.mktemp("hf_safetensors"))


@pytest.fixture(scope="session")
def hf_bin_dir(tmp_path_factory, tiny) -> Path:
    return save_hf(tiny, tmp_path_factory.mktemp("hf_bin"), safe=False)


@pytest.fixture(scope="session")
def original_dir(tmp_path_factory, tiny) -> Path:
    return save_original(tiny, tmp_path_factory.mktemp("original"), with_tokenizer=False)


@pytest.fixture(scope="session")
def tiny_fp16(tiny) -> torch.nn.Module:
    import copy

    return fp16_rounded(copy.deepcopy(tiny))


@pytest.fixture(scope="session")
def topical_contexts() -> list[list[str]]:
    """Real dialogue: the first three turns of Topical-Chat test conversations."""
    return [c[:3] for c in topical_chat("test_freq", limit=6)]


@pytest.fixture(scope="session")
def exported(tmp_path_factory, hf_dir):
    """One export per variant of the safetensors checkpoint, shared by the tests."""
    cache: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in cache:
            out = tmp_path_factory.mktemp(f"export_{variant}") / "model"
            export_model(hf_dir, out, ExportOptions(variant=variant, progress=False, n_prompts=2,
                                                    parity_tokens=16))
            cache[variant] = out
        return cache[variant]

    return get


@pytest.fixture(scope="session")
def backward_dir(tmp_path_factory, hf_bin_dir):
    """Any model with the same tokenizer serves to test the mechanics (the real one is trained with
    `dialogpt-onnx train --reverse`); exported with all-position logits, as a backward model should be."""
    out = tmp_path_factory.mktemp("backward") / "model"
    export_model(hf_bin_dir, out, ExportOptions(variant="fp32", all_logits=True, progress=False, n_prompts=1,
                                                parity_tokens=4))
    return out
