"""Checks against transformers shared by the test modules: greedy decoding token for token."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from dialogpt_onnx import runtime
from dialogpt_onnx.runtime.text import EOS_TOKEN_ID, encode_dialogue

EOS = EOS_TOKEN_ID


def contexts_ids(model, contexts: list[list[str]]) -> list[list[int]]:
    return [encode_dialogue(model.tokenizer, c, model.eos) for c in contexts]


def torch_greedy(ref: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = ref.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=EOS, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def assert_greedy_parity(model_dir, ref, contexts, n=64):
    model = runtime.load(model_dir)
    prompts = contexts_ids(model, contexts)
    for prompt in prompts:
        # min_new_tokens = max: EOS cannot stop either side early, so all 64 tokens are compared
        ours = model.generate(prompt, max_new_tokens=n, min_new_tokens=n).ids
        assert ours == torch_greedy(ref, prompt, n)


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's presence / frequency penalties as its API reference states them (transformers has none):
    logit[j] -= c[j] * frequency + (c[j] > 0) * presence, c counting the tokens generated so far."""

    def __init__(self, prompt_len: int, presence: float, frequency: float) -> None:
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        c = torch.bincount(input_ids[0, self.prompt_len:], minlength=scores.shape[-1]).to(scores.dtype)
        return scores - (c * self.frequency + (c > 0).to(scores.dtype) * self.presence)


def load_form(model_dir, form: str = "batched"):
    """The model as onnxruntime >= 1.32 runs it ("batched": GQA's query_seqlens added at load) or as every
    other runtime does ("universal": the export's 7-input GQA; a ragged prefill runs row by row)."""
    from dialogpt_onnx.runtime.contrib_graph import ContribGraph

    old = ContribGraph.batched
    ContribGraph.batched = form == "batched"
    try:
        model = runtime.load(model_dir)
    finally:
        ContribGraph.batched = old
    assert getattr(model.graph, "ragged", False) == (form == "batched" and old)
    return model
