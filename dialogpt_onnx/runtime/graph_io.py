"""The graph's inputs and outputs, typed: the exporter builds its graph with these names and writes them
to the manifest; the runtime reads them back into the same class. Lives in the runtime because the
runtime ships without the exporter."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

# Input roles each graph kind takes (the runtime feeds them by role).
CONTRIB_INPUTS = ("input_ids", "attention_mask", "position_ids")
PORTABLE_INPUTS = ("input_ids", "attention_mask", "position_ids")


@dataclass(frozen=True)
class GraphIO:
    inputs: dict[str, str]  # role -> graph input name
    logits: str  # output name
    past_key: str  # per layer, formatted with the layer index
    past_value: str
    present_key: str
    present_value: str
    logits_positions: str  # "last": the last real position of each row; "all": every position
    kv_layout: str  # for readers of the manifest
    kv_buffer: str  # "in place": one buffer bound as past and present; "concatenated": present = past + new
    max_kv_length: int | None = None

    def kv_name(self, which: str, kind: str, layer: int) -> str:
        """which: "past" | "present"; kind: "key" | "value"."""
        return getattr(self, f"{which}_{kind}").format(layer)

    @property
    def all_logits(self) -> bool:
        return self.logits_positions == "all"

    def to_manifest(self) -> dict[str, Any]:
        return {"inputs": dict(self.inputs), "outputs": {"logits": self.logits},
                "past_key": self.past_key, "past_value": self.past_value,
                "present_key": self.present_key, "present_value": self.present_value,
                "kv_layout": self.kv_layout, "kv_buffer": self.kv_buffer, "logits": self.logits_positions,
                "max_kv_length": self.max_kv_length}

    @classmethod
    def from_manifest(cls, io: object) -> GraphIO:
        """The manifest's io table, checked: raises TypeError naming what is wrong (the manifest reader turns
        that into one line)."""
        if not isinstance(io, dict):
            raise TypeError("lacks 'io'")
        for k in ("inputs", "outputs", "past_key", "past_value", "present_key", "present_value", "logits"):
            if k not in io:
                raise TypeError(f"lacks io.{k}")
        if not isinstance(io["inputs"], dict) or not all(isinstance(v, str) for v in io["inputs"].values()):
            raise TypeError("has malformed io.inputs: they must map roles to names")
        if not isinstance(io["outputs"], dict) or not isinstance(io["outputs"].get("logits"), str):
            raise TypeError("has malformed io.outputs: they must name the logits")
        texts = {k: io[k] for k in ("past_key", "past_value", "present_key", "present_value", "logits")}
        if not all(isinstance(v, str) for v in texts.values()):
            raise TypeError("has a malformed io table: its names must be strings")
        return cls(inputs=dict(io["inputs"]), logits=io["outputs"]["logits"], past_key=texts["past_key"],
                   past_value=texts["past_value"], present_key=texts["present_key"],
                   present_value=texts["present_value"], logits_positions=texts["logits"],
                   kv_layout=str(io.get("kv_layout", "")), kv_buffer=str(io.get("kv_buffer", "")),
                   max_kv_length=io.get("max_kv_length"))


CONTRIB_IO = GraphIO(
    # attention_mask: per row, as many ones as KV slots filled after this step (its width may be the buffer's);
    # position_ids: -1 marks a right-padded row's padding
    inputs={k: k for k in CONTRIB_INPUTS}, logits="logits",
    past_key="past_key_values.{}.key", past_value="past_key_values.{}.value", present_key="present.{}.key",
    present_value="present.{}.value", logits_positions="last",
    kv_layout="BNSH [batch, n_head, capacity, head_dim], float32",
    kv_buffer="in place: bind one buffer as past and present; GroupQueryAttention appends to it (or feed "
              "present back as the next past, as genai without a shared buffer and transformers.js do)",
)

# optimum's names (the portable graph is traced by optimum-onnx)
PORTABLE_IO = GraphIO(
    inputs={k: k for k in PORTABLE_INPUTS}, logits="logits",
    past_key="past_key_values.{}.key", past_value="past_key_values.{}.value",
    present_key="present.{}.key", present_value="present.{}.value", logits_positions="all",
    kv_layout="BNSH [batch, n_head, past_length, head_dim], float32",
    kv_buffer="concatenated: present = past + new, fed back as the next past",
)


def contrib_io(all_logits: bool, max_kv_length: int) -> GraphIO:
    return replace(CONTRIB_IO, logits_positions="all" if all_logits else "last", max_kv_length=max_kv_length)
