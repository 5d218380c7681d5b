"""The Mixture-of-Experts layer every MoE architecture shares (qwen3_moe, mixtral, gpt_oss).

A router (a linear layer, with a bias in gpt-oss) scores the E experts for each token; `route` keeps the k best and
weights them as the architecture says (`Routing`). Each projection's E matrices are stacked per layer,
[E, out, in] (`SwitchLinear`), and applied only to the (token, expert) pairs the router chose with one gathered
matmul (`ops.gather_matmul`: MLX's `mx.gather_mm` / `mx.gather_qmm`, or the CUDA backend's own kernel for a decode
step) instead of a loop over experts. For many pairs (a prefill chunk) the pairs are sorted by expert first
(`ops.sorts_experts`), so each expert's matrix is read once per run of its tokens, as in mlx-lm's switch_layers.py.

Parameter names are mlx-lm's (`gate` for the router, `switch_mlp.{gate,up,down}_proj` for the experts), so its
converted folders need no renames; checkpoints' per-expert tensors are stacked by each model's sanitize
(`stack_experts`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlxd.errors import ModelLoadError
from mlxd.models import ops
from mlxd.models.base import ExpertQuantization

# activation(gate, up, tokens) for the experts' hidden features; `tokens`: tokens per sequence in this forward
# pass (models/ops.py: how its CPU kernels tell a prefill from a decode step).
GatedActivation = Callable[[mx.array, mx.array, int], mx.array]


def swiglu(gate: mx.array, up: mx.array, tokens: int) -> mx.array:
    """silu(gate) * up: the experts of Qwen3-MoE and Mixtral."""
    return ops.gated_activation(gate, up, "silu", tokens)


@dataclass(frozen=True)
class Routing:
    """How one token's router logits over the experts become k experts and their weights.

    Both rules take the k largest logits: a softmax over all experts, then the k kept probabilities, divided by
    their sum when `renormalize` (Mixtral always, Qwen3-MoE iff norm_topk_prob). gpt-oss's softmax over the k kept
    logits is the renormalizing rule (the same numbers, and computed so: `route`)."""

    top_k: int
    renormalize: bool = True


def route(logits: mx.array, routing: Routing) -> tuple[mx.array, mx.array]:
    """The experts [..., k] (in no particular order) and their weights [..., k] for router logits [..., E]. The
    softmax runs in float32 (`precise`), as transformers' does, and rounds once to the logits' dtype.

    Renormalizing the k kept probabilities of a softmax over all experts gives the softmax over the k kept logits
    (the sum over all experts cancels), so that is what a renormalizing router computes: three kernels per layer
    instead of seven, which counts in a decode step bound by kernel launches (docs/performance.md)."""
    return ops.route_experts(logits, routing.top_k, routing.renormalize)


class SwitchLinear(nn.Module):
    """E linear layers of one shape: weight [E, out, in] and an optional bias [E, out]. Row r of the input goes
    through the expert indices[r] names."""

    def __init__(self, input_dims: int, output_dims: int, experts: int, bias: bool = False):
        super().__init__()
        scale = input_dims**-0.5  # nn.Linear's initialization, for models built without a checkpoint
        self.weight = mx.random.uniform(-scale, scale, (experts, output_dims, input_dims))
        if bias:
            self.bias = mx.zeros((experts, output_dims))

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        return _add_bias(self, ops.gather_matmul(x, indices, self.weight, None, sorted_indices), indices)

    def quantization(self) -> ExpertQuantization | None:
        return None

    def to_quantized(self, group_size: int = 64, bits: int = 4, mode: str = "affine") -> QuantizedSwitchLinear:
        """This layer with quantized weights (what nn.quantize calls, as it does on nn.Linear)."""
        experts, output_dims, input_dims = self.weight.shape
        layer = QuantizedSwitchLinear(input_dims, output_dims, experts, "bias" in self, group_size, bits, mode)
        layer.weight, layer.scales, *biases = mx.quantize(self.weight, group_size, bits, mode=mode)
        if biases:
            layer.biases = biases[0]
        if "bias" in self:
            layer.bias = self.bias
        return layer


class QuantizedSwitchLinear(nn.Module):
    """SwitchLinear with each expert's matrix quantized as QuantizedLinear holds it (`weight`, `scales`, and
    `biases` in affine mode); `bias` is the float per-expert bias, as in SwitchLinear."""

    def __init__(self, input_dims: int, output_dims: int, experts: int, bias: bool = False, group_size: int = 64,
                 bits: int = 4, mode: str = "affine"):
        super().__init__()
        self.group_size, self.bits, self.mode = group_size, bits, mode
        # The packed layout of this mode, filled by load_weights.
        self.weight, self.scales, *biases = mx.quantize(mx.zeros((experts, output_dims, input_dims)),
                                                        group_size, bits, mode=mode)
        if biases:
            self.biases = biases[0]
        if bias:
            self.bias = mx.zeros((experts, output_dims))

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        return _add_bias(self, ops.gather_matmul(x, indices, self.weight, self.quantization(), sorted_indices),
                         indices)

    def quantization(self) -> ExpertQuantization:
        return ExpertQuantization(self.group_size, self.bits, self.mode, self.scales, self.get("biases"))


def _add_bias(layer: nn.Module, y: mx.array, indices: mx.array) -> mx.array:
    """y [..., 1, out] plus the bias of each row's expert."""
    return y + mx.expand_dims(layer["bias"][indices], -2) if "bias" in layer else y


class StackedExperts(nn.Module):
    """The experts of one layer, each projection's E matrices stacked; a subclass says how one row goes through its
    experts (`mlp`)."""

    def __call__(self, x: mx.array, indices: mx.array, tokens: int) -> mx.array:
        """Each token of x [..., dims] through each of its experts indices [..., k]: [..., k, dims]."""
        x = mx.expand_dims(x, (-2, -3))  # [..., 1, 1, dims]: one row per token, broadcast over its k experts
        order = None
        if ops.sorts_experts(indices.size, self.quantizations):
            x, experts, order = _sort_by_expert(x, indices)
        else:
            experts = indices
        y = self.mlp(x, experts, order is not None, tokens)
        if order is not None:
            y = mx.unflatten(y[mx.argsort(order)], 0, indices.shape)  # back to [..., k, 1, dims]
        return y.squeeze(-2)

    def mlp(self, x: mx.array, experts: mx.array, by_expert: bool, tokens: int) -> mx.array:
        """Rows x [..., 1, dims] through their experts [...] (the rows ordered by expert when `by_expert`)."""
        raise NotImplementedError

    def projections(self) -> list[SwitchLinear | QuantizedSwitchLinear]:
        """The stacked projections `mlp` applies."""
        raise NotImplementedError

    def quantizations(self) -> list[ExpertQuantization | None]:
        """Each projection's weight kind (whether the pairs are sorted may depend on them: `ops.sorts_experts`)."""
        return [p.quantization() for p in self.projections()]


class SwitchGLU(StackedExperts):
    """The experts of one layer: down(activation(gate x, up x)), each projection's E matrices stacked. `fused`:
    gate and up held as one [E, 2 * hidden, in] layer `gate_up_proj` (one gathered matmul instead of two; the
    loader decides, loading/fusion.py), gate in the first half."""

    def __init__(self, dims: int, hidden: int, experts: int, *, bias: bool = False,
                 activation: GatedActivation = swiglu, fused: bool = False):
        super().__init__()
        self.fused = fused
        if fused:
            self.gate_up_proj = SwitchLinear(dims, 2 * hidden, experts, bias)
        else:
            self.gate_proj = SwitchLinear(dims, hidden, experts, bias)
            self.up_proj = SwitchLinear(dims, hidden, experts, bias)
        self.down_proj = SwitchLinear(hidden, dims, experts, bias)
        self.activation = activation

    def mlp(self, x: mx.array, experts: mx.array, by_expert: bool, tokens: int) -> mx.array:
        if self.fused:
            gate, up = mx.split(self.gate_up_proj(x, experts, by_expert), 2, axis=-1)
        else:
            gate, up = self.gate_proj(x, experts, by_expert), self.up_proj(x, experts, by_expert)
        return self.down_proj(self.activation(gate, up, tokens), experts, by_expert)

    def projections(self) -> list[SwitchLinear | QuantizedSwitchLinear]:
        if self.fused:
            return [self.gate_up_proj, self.down_proj]
        return [self.gate_proj, self.up_proj, self.down_proj]


class SwitchMLP(StackedExperts):
    """Ungated experts: fc2(activation(fc1 x)), each projection's E matrices stacked (Nemotron-H's relu² experts,
    under mlx-lm's names). Called as SwitchGLU is."""

    def __init__(self, dims: int, hidden: int, experts: int, activation: Callable[[mx.array], mx.array], *,
                 bias: bool = False):
        super().__init__()
        self.fc1 = SwitchLinear(dims, hidden, experts, bias)
        self.fc2 = SwitchLinear(hidden, dims, experts, bias)
        self.activation = activation

    def mlp(self, x: mx.array, experts: mx.array, by_expert: bool, tokens: int) -> mx.array:
        return self.fc2(self.activation(self.fc1(x, experts, by_expert)), experts, by_expert)

    def projections(self) -> list[SwitchLinear | QuantizedSwitchLinear]:
        return [self.fc1, self.fc2]


def _sort_by_expert(x: mx.array, indices: mx.array) -> tuple[mx.array, mx.array, mx.array]:
    """One row per (token, expert) pair [pairs, 1, dims], ordered by expert; the experts in that order; and the
    order (pair numbers, token-major) that undoes it."""
    k = indices.shape[-1]
    flat = indices.flatten()
    order = mx.argsort(flat)
    return x.flatten(0, -3)[order // k], flat[order], order


class SparseMoe(nn.Module):
    """A MoE MLP: the router (`gate`, or `router_name`) picks experts per token as `routing` says, and the output
    is the sum of the chosen experts' outputs (`switch_mlp`) times their weights. Router and experts may have
    biases (gpt-oss), and the experts another activation. gpt-oss's checkpoints and mlx-lm's conversions call the
    router `router`, and mlx-lm's per-layer quantization (8-bit routers) is keyed by that path.

    A model's block says what it computes in `_forward`; `__call__` runs it through ops.decode_block where the class
    sets COMPILED_DECODE: on the CUDA backend a decode step's block is then traced once per batch size and replayed
    (no Python per op, no per-call kernel-source building; ops_cuda.COMPILED_BLOCKS). On for the models whose step
    an H200 measured with it (GLM-4.7-Flash: a 16-row step 36.3 -> 29.0 ms, session 33); the others' turn comes
    with their own measurement (batch_step_profile --variant NAME:mlxd.models.moe.SparseMoe.COMPILED_DECODE=True)."""

    COMPILED_DECODE = False

    def __init__(self, dims: int, hidden: int, experts: int, routing: Routing, *, router_bias: bool = False,
                 expert_bias: bool = False, activation: GatedActivation = swiglu, fused: bool = False,
                 router_name: str = "gate", switch_mlp: nn.Module | None = None):
        """`switch_mlp`: the experts when they are not gated (SwitchMLP), in place of a SwitchGLU."""
        super().__init__()
        self.routing = routing
        self.experts = experts
        self.router_name = router_name
        self[router_name] = nn.Linear(dims, experts, bias=router_bias)
        if switch_mlp is None:
            switch_mlp = SwitchGLU(dims, hidden, experts, bias=expert_bias, activation=activation, fused=fused)
        self.switch_mlp = switch_mlp

    def __call__(self, x: mx.array, *more: mx.array) -> mx.array:
        if self.COMPILED_DECODE:
            return ops.decode_block(self, self._forward, x, *more)
        return self._forward(x, *more)

    def _forward(self, x: mx.array) -> mx.array:
        indices, weights = route(self[self.router_name](x), self.routing)
        y = self.switch_mlp(x, indices, tokens=x.shape[-2])  # x: [B, L, dims]
        return ops.combine_experts(y, weights)


def stack_experts(weights: dict[str, mx.array], prefix: str, experts: int,
                  names: dict[str, str]) -> dict[str, mx.array]:
    """`weights` with the per-expert tensors `{prefix}.experts.{e}.{name}.{weight,bias}` of a checkpoint stacked
    into `{prefix}.switch_mlp.{ours}.*`, for each name -> ours in `names` (e.g. "w1" -> "gate_proj"). Weights
    stacked already stay as they are; an expert missing beside the others is named."""
    out = dict(weights)
    for name, ours in names.items():
        for kind in ("weight", "bias"):
            parts = [f"{prefix}.experts.{e}.{name}.{kind}" for e in range(experts)]
            present = [p in out for p in parts]
            if any(present) and not all(present):
                raise ModelLoadError(f"the checkpoint lacks {parts[present.index(False)]} beside the other experts")
            if all(present) and present:
                out[f"{prefix}.switch_mlp.{ours}.{kind}"] = mx.stack([out.pop(p) for p in parts])
    return out
