"""SigLIP vision tower (no pooling head) and Gemma 3's multi-modal projector, in transformers' module layout."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlxd.models import ops
from mlxd.models.gemma3.config import ModelArgs, VisionArgs
from mlxd.models.gemma3_text import RMSNorm


class VisionEmbeddings(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.patch_embedding = nn.Conv2d(args.num_channels, args.hidden_size, kernel_size=args.patch_size,
                                         stride=args.patch_size)
        self.position_embedding = nn.Embedding((args.image_size // args.patch_size) ** 2, args.hidden_size)

    def __call__(self, pixels: mx.array) -> mx.array:
        patches = self.patch_embedding(pixels)  # [B, rows, cols, hidden]
        B, rows, cols, hidden = patches.shape
        # Row-major patch order, as torch's flatten(2) of the [B, hidden, rows, cols] convolution output.
        return patches.reshape(B, rows * cols, hidden) + self.position_embedding.weight


class VisionAttention(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        dim = args.hidden_size
        self.n_heads = args.num_attention_heads
        self.scale = (dim // self.n_heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        B, L, _ = x.shape
        q, k, v = (proj(x).reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        # Every patch sees every other patch: no mask.
        out = ops.attention(q, k, v, self.scale, None)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class VisionMLP(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.fc1 = nn.Linear(args.hidden_size, args.intermediate_size)
        self.fc2 = nn.Linear(args.intermediate_size, args.hidden_size)
        self._activation = "gelu_tanh" if args.hidden_act == "gelu_pytorch_tanh" else "gelu"

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(ops.activation(self.fc1(x), self._activation))


class EncoderLayer(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.self_attn = VisionAttention(args)
        self.layer_norm2 = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.mlp = VisionMLP(args)

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.layers = [EncoderLayer(args) for _ in range(args.num_hidden_layers)]


class VisionTransformer(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.embeddings = VisionEmbeddings(args)
        self.encoder = Encoder(args)
        self.post_layernorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, pixels: mx.array) -> mx.array:
        h = self.embeddings(pixels)
        for layer in self.encoder.layers:
            h = layer(h)
        return self.post_layernorm(h)


class VisionTower(nn.Module):
    """Holds `vision_model` so parameter names match the checkpoints' `vision_tower.vision_model.*`."""

    def __init__(self, args: VisionArgs):
        super().__init__()
        self.vision_model = VisionTransformer(args)

    def __call__(self, pixels: mx.array) -> mx.array:
        return self.vision_model(pixels)


class MultiModalProjector(nn.Module):
    """Average-pools the patch grid down to mm_tokens_per_image, normalizes, projects into the text width."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        vision = args.vision
        self.mm_input_projection_weight = mx.zeros((vision.hidden_size, args.text.hidden_size))
        self.mm_soft_emb_norm = RMSNorm(vision.hidden_size, vision.layer_norm_eps)
        self._side = vision.image_size // vision.patch_size
        self._tokens_side = round(args.mm_tokens_per_image**0.5)

    def __call__(self, patches: mx.array) -> mx.array:
        B, _, C = patches.shape
        t, k = self._tokens_side, self._side // self._tokens_side
        pooled = patches.reshape(B, t, k, t, k, C).mean(axis=(2, 4)).reshape(B, t * t, C)
        return self.mm_soft_emb_norm(pooled) @ self.mm_input_projection_weight
