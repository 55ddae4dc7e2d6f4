"""Every input form loads into the same canonical weights; configs of either style are understood."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from checkpoints import CONFIGS

from dialogpt_onnx.export.checkpoint import canonical_name, load_checkpoint
from dialogpt_onnx.export.config import config_from_dict
from dialogpt_onnx.export.errors import ExportError
from dialogpt_onnx.runtime.text import EOS_TOKEN_ID


def _reference(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k.removeprefix("transformer."): v.float().numpy() for k, v in model.state_dict().items()
            if not k.endswith((".attn.bias", ".attn.masked_bias")) and k != "lm_head.weight"}


@pytest.mark.parametrize("form", ["hf_dir", "hf_bin_dir"])
def test_hf_forms_load_exactly(request, tiny, form):
    ck = load_checkpoint(request.getfixturevalue(form))
    ref = _reference(tiny)
    assert ck.tied and set(ck.weights) == set(ref)
    for k, v in ref.items():
        np.testing.assert_array_equal(ck.weights[k], v, err_msg=k)
    assert ck.config.n_layer == 2 and ck.config.n_embd == 64 and ck.config.vocab_size == 50257


def test_original_form_fp16_unprefixed_decoder_head(original_dir, tiny_fp16):
    raw = json.loads((original_dir / "config.json").read_text())
    assert "model_type" not in raw and "architectures" not in raw
    sd = torch.load(next(original_dir.glob("*.pkl")), weights_only=True)
    assert "lm_head.decoder.weight" in sd and not any(k.startswith("transformer.") for k in sd)
    assert sd["wte.weight"].dtype == torch.float16
    ck = load_checkpoint(original_dir, tokenizer_dir=CONFIGS.parent / "dialogpt-tokenizer")
    assert ck.tied  # the decoder head equals wte, so it is kept once
    for k, v in _reference(tiny_fp16).items():
        np.testing.assert_array_equal(ck.weights[k], v, err_msg=k)


def test_original_configs_are_accepted_as_gpt2():
    for size, (layers, embd) in {"small": (12, 768), "medium": (24, 1024), "large": (36, 1280)}.items():
        cfg = config_from_dict(json.loads((CONFIGS / size / "config.json").read_text()))
        assert (cfg.n_layer, cfg.n_embd, cfg.n_positions, cfg.vocab_size) == (layers, embd, 1024, 50257)
        assert cfg.n_inner == 4 * embd and cfg.eos_token_id == EOS_TOKEN_ID


@pytest.mark.parametrize("name,canonical", [
    ("transformer.h.0.attn.c_attn.weight", "h.0.attn.c_attn.weight"),
    ("module.transformer.wte.weight", "wte.weight"),
    ("lm_head.decoder.weight", "lm_head.weight"),
    ("h.3.ln_1.g", "h.3.ln_1.weight"),
    ("transformer.h.1.attn.bias", None),
    ("h.1.attn.masked_bias", None),
])
def test_canonical_names(name, canonical):
    assert canonical_name(name) == canonical


def test_untied_head_is_kept(tmp_path, tiny):

    import copy

    m = copy.deepcopy(tiny)
    m.config.tie_word_embeddings = False
    m.lm_head.weight = torch.nn.Parameter(m.lm_head.weight.detach().clone() * 0.5)
    d = tmp_path / "untied"
    d.mkdir()
    torch.save(m.state_dict(), d / "pytorch_model.bin")
    (d / "config.json").write_text(json.dumps(m.config.to_dict()))
    from checkpoints import copy_tokenizer

    copy_tokenizer(d)
    ck = load_checkpoint(d)
    assert not ck.tied
    np.testing.assert_array_equal(ck.weights["lm_head.weight"], m.lm_head.weight.detach().numpy())


def test_bert_config_rejected():
    with pytest.raises(ExportError, match="not GPT-2"):
        config_from_dict({"model_type": "bert", "hidden_size": 768})
    with pytest.raises(ExportError, match="lacks GPT-2 keys"):
        config_from_dict({"hidden_size": 768, "num_attention_heads": 12})
