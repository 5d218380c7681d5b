"""Gemma3ForConditionalGeneration: vision tower + projector produce image embeddings, the text model runs."""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn

from mlxd.images.prompt import ImageTokens
from mlxd.models import gemma3_text
from mlxd.models.base import AttentionCache
from mlxd.models.cache import LayerCache
from mlxd.models.gemma3 import language
from mlxd.models.gemma3.config import ModelArgs
from mlxd.models.gemma3.vision import MultiModalProjector, VisionTower
from mlxd.models.projections import Projections
from mlxd.models.protocol import ChunkImages

# Where the text decoder's weights sit.
TEXT = "language_model."
# transformers 5 saves the VLM under `model.`; older checkpoints and MLX conversions use these names.
_RENAMES = (
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
)


def _rename(key: str) -> str:
    for old, new in _RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


class Model(nn.Module):
    def __init__(self, args: ModelArgs, fused: frozenset[str] = frozenset()):
        """`fused`: the groups of fusable_projections() to build as one matmul (the loader decides which)."""
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        self.language_model = gemma3_text.Model(args.text, frozenset(p.removeprefix(TEXT) for p in fused))
        self.vision_tower = VisionTower(args.vision)
        self.multi_modal_projector = MultiModalProjector(args)
        self.image_tokens = ImageTokens(
            begin_id=args.boi_token_index, image_id=args.image_token_index, end_id=args.eoi_token_index,
            per_image=args.mm_tokens_per_image, image_size=args.vision.image_size,
            # Gemma3Processor writes a blank line on each side of an image.
            text_before="\n\n", text_after="\n\n")

    @property
    def layers(self) -> list:
        return self.language_model.layers

    def __call__(self, inputs: mx.array, cache: Sequence[AttentionCache] | None = None, *,
                 input_embeddings: mx.array | None = None,
                 images: ChunkImages = ()) -> mx.array:
        if not images:
            return self.language_model(inputs, cache, input_embeddings=input_embeddings)
        h = self.language_model.embed(inputs) if input_embeddings is None else input_embeddings
        return self.language_model(
            inputs, cache, input_embeddings=language.splice_images(h, images),
            mask_modifier=lambda length, c, mask: language.image_block_mask(length, c, mask, images))

    def encode_images(self, pixels: mx.array) -> mx.array:
        """Embeddings [B, mm_tokens_per_image, text hidden] of normalized pixels [B, 3, H, W]."""
        dtype = self.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype
        patches = self.vision_tower(pixels.transpose(0, 2, 3, 1).astype(dtype))
        return self.multi_modal_projector(patches)

    def fusable_projections(self) -> dict[str, Projections]:
        """The text decoder's; the vision tower's attention stays split."""
        return {TEXT + path: group for path, group in self.language_model.fusable_projections().items()}

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        out = {}
        for key, value in weights.items():
            key = _rename(key)
            if key.endswith("position_ids"):
                continue  # a buffer some SigLIP checkpoints carry
            if key.endswith("patch_embedding.weight") and value.shape[1] == self.args.vision.num_channels:
                value = value.transpose(0, 2, 3, 1)  # torch conv [out, in, kh, kw] -> MLX [out, kh, kw, in]
            out[key] = value
        text = {k.removeprefix(TEXT): v for k, v in out.items() if k.startswith(TEXT)}
        rest = {k: v for k, v in out.items() if not k.startswith(TEXT)}
        return rest | {TEXT + k: v for k, v in self.language_model.sanitize(text).items()}

    def make_cache(self) -> list[LayerCache]:
        return self.language_model.make_cache()

    def shard(self, group: mx.distributed.Group) -> None:
        """The language model's heads and features; the vision tower (run once per image) stays replicated."""
        self.language_model.shard(group)
