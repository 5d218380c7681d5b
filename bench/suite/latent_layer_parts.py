"""One routed layer of an MLA model (GLM-4.7-Flash's shape) cut into its parts, each timed alone at a decode
step's size, and the whole layer beside them: which kernels make a 16-row step slow on the device, and which part
is host work (issue 21: mlxd's 16-row step holds a third fewer kernels than mlx-lm's and is only ~8 % faster).

    python -m bench latent_layer_parts --model FOLDER [--rows 16] [--context 256] [--calls 20] [--rounds 5]

FOLDER is a glm4_moe_lite model (`random_model --shape glm-4.7-flash --bits 4 --layers 2` writes one in seconds),
loaded by mlxd's loader, so its projections are fused and quantized as served. Each part is called `--calls`
times on the same inputs, queued, then evaluated together (the host's building overlaps the device, as in a step),
best of `--rounds`: us per call, and the building alone (the host's part). A part whose whole is no more than its
host part waited on the host. The parts' sum against the blocks says what the parts leave out (the residual adds,
the cache's update). Where the ops backend is not MLX's own (CUDA: mlxd's kernels for the latent attention, the
router, the experts and their combining), every part is timed again with MLX's ops in the same process, so each
kernel of ours stands beside what it replaced. Runs on any device; the H200 is what it is for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common
from bench.suite.expert_matmul import best_us


def parts(layer: Any, rows: int, context: int) -> dict[str, Callable[[], Any]]:
    """The layer's parts on random inputs of a decode step of `rows` rows at `context` cached tokens."""
    import mlx.core as mx

    from mlxd.models import ops

    attn, mlp = layer.self_attn, layer.mlp
    dtype = layer.input_layernorm.weight.dtype
    dims = layer.input_layernorm.weight.shape[0]
    x = mx.random.normal((rows, 1, dims)).astype(dtype)
    q, compressed = attn._down_projections(x)
    q = q.reshape(rows, 1, attn.n_heads, -1).transpose(0, 2, 1, 3)
    q_nope, q_rot = q[..., : attn.nope], q[..., attn.nope:]
    latent = mx.random.normal((rows, 1, context, attn.latent_dims)).astype(dtype)
    k_rot = mx.random.normal((rows, 1, context, attn.rope_dims)).astype(dtype)
    q_latent = attn._up_projection(q_nope, value=False)
    mixed = ops.latent_attention(q_latent, q_rot, latent, k_rot, attn.scale, None)
    out = attn._up_projection(mixed, value=True).transpose(0, 2, 1, 3).reshape(rows, 1, -1)
    indices, weights = mlp.gate(x)
    routed = mlp.switch_mlp(x, indices, tokens=1)
    mx.eval(q_nope, q_rot, latent, k_rot, q_latent, mixed, out, indices, weights, routed)
    return {
        "input norm": lambda: layer.input_layernorm(x),
        "down projections, q_b": lambda: attn._down_projections(x),
        "rope (q, k)": lambda: (attn.rope(q_rot, context), attn.rope(k_rot[:, :, -1:], context)),
        "absorb q (kv_b keys)": lambda: attn._up_projection(q_nope, value=False),
        "latent attention": lambda: ops.latent_attention(q_latent, q_rot, latent, k_rot, attn.scale, None),
        "absorb out (kv_b values)": lambda: attn._up_projection(mixed, value=True),
        "o_proj": lambda: attn.o_proj(out),
        "router": lambda: mlp.gate(x),
        "routed experts": lambda: mlp.switch_mlp(x, indices, tokens=1),
        "combine": lambda: ops.combine_experts(routed, weights),
        "shared experts": lambda: mlp.shared_experts(x),
        "MoE block": lambda: mlp(x),
        "attention from the latents": lambda: attn._absorbed(q_nope, q_rot, latent, k_rot, None),
    }


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    import mlx.core as mx

    from mlxd.loading.loader import load_model
    from mlxd.models import ops
    from mlxd.models.glm4_moe_lite.experts import SharedExpertMoe

    model = load_model(args.model, fuse=True).model  # as served: gate and up one matmul, the two down-projections one
    routed = [layer for layer in model.layers if isinstance(layer.mlp, SharedExpertMoe)]
    if not routed:
        raise SystemExit(f"{args.model} has no routed MLA layer (a glm4_moe_lite model is wanted)")
    backends = list(dict.fromkeys([ops.backend(), "mlx"]))
    timed: dict[str, list[tuple[float, float]]] = {}
    for backend in backends:
        with ops.using(backend):
            for name, call in parts(routed[0], args.rows, args.context).items():
                timed.setdefault(name, []).append(best_us(call, args.calls, args.rounds))
    pieces = [name for name in timed if name not in ("MoE block", "attention from the latents")]
    lines = [[name, *(f"{t:.1f}" for pair in runs for t in pair)] for name, runs in timed.items()]
    lines.append(["the parts' sum (blocks left out)",
                  *(f"{sum(timed[n][i][j] for n in pieces):.1f}" for i in range(len(backends)) for j in (0, 1))])
    print(f"\n{args.model.name} on {mx.default_device()}, one routed layer, {args.rows} rows at {args.context} "
          f"cached tokens, best of {args.rounds} rounds of {args.calls} calls (us per call)")
    print(common.table(["part", *(f"{what} ({b})" for b in backends for what in ("us", "host us"))], lines))


if __name__ == "__main__":
    main()
