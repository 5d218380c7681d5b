"""What the engine needs from a model, and nothing else (issue 14): a reader, mypy and a new model's author
all find it here.

The engine's runner is the only caller. Text models take token ids; a vision-language model also takes the
image embeddings of the prompt chunk it is given, and encodes images with its vision tower.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import mlx.core as mx
import mlx.nn as nn

from mlxd.images.prompt import ImageTokens

# (position of the image's first token within the chunk, its embeddings [tokens, hidden]), for each image whose
# span lies in a prefill chunk.
ChunkImages = Sequence[tuple[int, mx.array]]


class LanguageModel(Protocol):
    """A decoder: logits [B, L, vocab] for input ids [B, L], appending to `cache` (one entry per layer, from
    make_cache, or the batched caches of the decode batch)."""

    @property
    def layers(self) -> Sequence[nn.Module]: ...

    def __call__(self, inputs: mx.array, cache: list[Any] | None = None, *,
                 input_embeddings: mx.array | None = None) -> mx.array: ...

    def make_cache(self) -> list[Any]: ...

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]: ...


class VisionLanguageModel(LanguageModel, Protocol):
    image_tokens: ImageTokens

    def __call__(self, inputs: mx.array, cache: list[Any] | None = None, *,
                 input_embeddings: mx.array | None = None, images: ChunkImages = ()) -> mx.array: ...

    def encode_images(self, pixels: mx.array) -> mx.array:
        """Embeddings [B, tokens per image, hidden] of normalized pixels [B, 3, H, W]."""
        ...
