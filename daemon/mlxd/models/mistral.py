"""Mistral: the Llama layout with sliding-window attention in every layer."""

from __future__ import annotations

from dataclasses import dataclass

from mlxd.models import llama


@dataclass
class ModelArgs(llama.ModelArgs):
    # transformers' MistralConfig default; v0.2+ checkpoints set it to null explicitly.
    sliding_window: int | None = 4096


Model = llama.Model
