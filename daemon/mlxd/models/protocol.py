"""What the engine needs from a model, and nothing else (issue 14): a reader, mypy and a new model's author
all find it here. The loader also calls `sanitize` and `fusable_projections` (models/projections.py), holds
in float32 the parameters a Model class names in FLOAT32_PARAMETERS (loading/weights.py, float32_parameters), and
gives the parts of a layer that sanitize splits (SPLIT_LAYERS) that layer's per-layer quantization.

The engine's runner is the only caller. Text models take token ids; a vision-language model also takes the
image embeddings of the prompt chunk it is given, and encodes images with its vision tower. Which kind a
checkpoint is, the architecture registry says (mlxd.models.architecture), not the model object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import mlx.core as mx
import mlx.nn as nn

from mlxd.images.prompt import ImageTokens
from mlxd.models.base import AttentionCache
from mlxd.models.cache import LayerCache
from mlxd.models.projections import Projections

# (position of the image's first token within the chunk, its embeddings [tokens, hidden]), for each image whose
# span lies in a prefill chunk, in order of position.
ChunkImages = Sequence[tuple[int, mx.array]]


class LanguageModel(Protocol):
    """A decoder: logits [B, L, vocab] for input ids [B, L], appending to `cache` (one entry per layer, from
    make_cache, or the batched caches of the decode batch).

    `input_embeddings` [B, L, hidden], when given, replace what the model makes of `inputs` as the first layer's
    input (for Gemma after its sqrt(hidden) scale, as transformers' inputs_embeds); `inputs` still gives L."""

    @property
    def layers(self) -> Sequence[nn.Module]: ...

    def __call__(self, inputs: mx.array, cache: Sequence[AttentionCache] | None = None, *,
                 input_embeddings: mx.array | None = None) -> mx.array: ...

    def make_cache(self) -> list[LayerCache]: ...

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """The checkpoint's arrays under this model's parameter names (the fused groups' concatenated)."""
        ...

    def fusable_projections(self) -> dict[str, Projections]:
        """Module path -> linear layers there that may share one matmul; `Model(args, fused)` builds some fused."""
        ...

    def shard(self, group: mx.distributed.Group) -> None:
        """Keep only this rank's share of the weights for tensor parallelism over `group` (models/sharding.py):
        its heads and hidden features, with one all_sum per block; called on an unfused model before its lazily
        loaded weights are evaluated, so each rank reads only its share."""
        ...


class VisionLanguageModel(LanguageModel, Protocol):
    image_tokens: ImageTokens

    def __call__(self, inputs: mx.array, cache: Sequence[AttentionCache] | None = None, *,
                 input_embeddings: mx.array | None = None, images: ChunkImages = ()) -> mx.array: ...

    def encode_images(self, pixels: mx.array) -> mx.array:
        """Embeddings [B, tokens per image, hidden] of normalized pixels [B, 3, H, W]."""
        ...
