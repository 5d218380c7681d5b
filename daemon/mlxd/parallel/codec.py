"""The arguments of runner calls as JSON values and back: sampling settings (with the seed rank 0 drew, so every
rank samples the same tokens) and prompt images (their normalized pixels, base64)."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from mlxd.engine.request import PromptImage
from mlxd.engine.runner import ChunkImage, StepResult
from mlxd.generation.params import SamplingParams


def encode_sampling(params: SamplingParams) -> dict[str, Any]:
    fields = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    fields["logit_bias"] = [[int(k), float(v)] for k, v in params.logit_bias.items()]
    return fields


def decode_sampling(fields: dict[str, Any]) -> SamplingParams:
    names = {f.name for f in dataclasses.fields(SamplingParams)}
    values = {k: v for k, v in fields.items() if k in names}
    values["logit_bias"] = {int(k): float(v) for k, v in fields.get("logit_bias", [])}
    return SamplingParams(**values)


def encode_images(images: Sequence[ChunkImage]) -> list[dict[str, Any]]:
    out = []
    for start, image in images:
        pixels = np.ascontiguousarray(image.pixels, dtype=np.float32)
        out.append({"start": start, "position": image.position, "length": image.length, "digest": image.digest,
                    "shape": list(pixels.shape), "pixels": base64.b64encode(pixels.tobytes()).decode()})
    return out


def decode_images(encoded: list[dict[str, Any]]) -> list[ChunkImage]:
    out = []
    for e in encoded:
        pixels = np.frombuffer(base64.b64decode(e["pixels"]), dtype=np.float32).reshape(e["shape"])
        out.append((int(e["start"]), PromptImage(int(e["position"]), int(e["length"]), pixels, str(e["digest"]))))
    return out


def read_tokens(results: Sequence[StepResult]) -> list[int]:
    """The tokens a step read, every row's run in row order: what rank 0 sends for the followers to check."""
    return [token for result in results for token in result.tokens]
