"""The CUDA backend's own kernels (models/ops_cuda.py). On a CUDA device: a Gated DeltaNet layer's decode step
through the fused kernels equals the same step through the MLX ops of models/gated_delta.py, outputs and both
states, for the head layouts the models have (grouped and tiled value heads, key widths that fill, cut and
undershoot a warp), in float32 and bfloat16, with inputs that are slices of a wider projection as the unfused and
fused layers give them. Skipped elsewhere; a CPU run checks that the backends without the kernels decline, and the
CUDA backend's quantized matmul (plain MLX ops) everywhere."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlxd.models import ops
from mlxd.models.base import DeltaHeads
from mlxd.models.ops_cuda import CudaBackend
from mlxd.models.qwen3_5 import GatedDeltaNet, ModelArgs
from mlxd.models.recurrent_cache import RecurrentCache

on_cuda = pytest.mark.skipif(not mx.cuda.is_available(), reason="needs MLX's CUDA backend")


def _layer(hk: int, hv: int, dk: int, dv: int, tiled: bool, fused: bool, dtype: mx.Dtype) -> GatedDeltaNet:
    args = ModelArgs.from_dict({
        "model_type": "qwen3_5", "hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 64,
        "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "vocab_size": 32,
        "linear_num_key_heads": hk, "linear_num_value_heads": hv, "linear_key_head_dim": dk,
        "linear_value_head_dim": dv, "linear_value_head_order": "tiled" if tiled else "grouped"})
    layer = GatedDeltaNet(args, fused)
    mx.random.seed(hk * 1000 + dk + dv + tiled)
    layer.update(nn.utils.tree_map(lambda p: mx.random.normal(p.shape) * 0.3, layer.parameters()))
    layer.A_log = mx.random.uniform(-1.0, 1.0, (hv,))
    layer.set_dtype(dtype)
    return layer


def _step(layer: GatedDeltaNet, x: mx.array, conv_state: mx.array, state: mx.array, kernels: str):
    with ops.using(kernels):
        cache = RecurrentCache()
        cache.advance(conv_state, state, 5)
        out = layer(x, cache)
        mx.eval(out, cache.conv_state, cache.recurrent_state)
        return out, cache.conv_state, cache.recurrent_state


@on_cuda
@pytest.mark.parametrize("dtype,tolerance", [(mx.float32, 1e-4), (mx.bfloat16, 3e-2)])
@pytest.mark.parametrize("hk,hv,dk,dv,tiled", [(2, 4, 128, 128, False), (2, 4, 64, 32, True), (1, 3, 24, 8, False),
                                               (3, 3, 40, 6, False)])
@pytest.mark.parametrize("fused", [False, True])
def test_fused_decode_step_equals_the_mlx_ops(dtype, tolerance, hk, hv, dk, dv, tiled, fused):
    layer = _layer(hk, hv, dk, dv, tiled, fused, dtype)
    rows, channels = 3, 2 * hk * dk + hv * dv
    x = mx.random.normal((rows, 1, 64)).astype(dtype)
    conv_state = mx.random.normal((rows, 3, channels)).astype(dtype)
    state = mx.random.normal((rows, hv, dv, dk)) * 0.5
    want = _step(layer, x, conv_state, state, "mlx")
    got = _step(layer, x, conv_state, state, "cuda")
    for name, w, g in zip(("output", "conv state", "recurrent state"), want, got, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        scale = max(1.0, mx.abs(w.astype(mx.float32)).max().item())
        assert mx.abs(g.astype(mx.float32) - w.astype(mx.float32)).max().item() <= tolerance * scale, name


@on_cuda
def test_the_loader_chooses_the_cuda_kernels_on_a_cuda_gpu():
    assert ops.choose(mx.Device(mx.gpu), "bfloat16") == "cuda"
    assert ops.choose(mx.Device(mx.cpu), "float32") == "numpy"


def test_backends_without_the_kernels_decline():
    heads = DeltaHeads(1, 1, 4, 4)
    for kernels in ("mlx", "numpy"):
        with ops.using(kernels):
            assert ops.gated_delta_decode(mx.zeros((1, 1, 12)), mx.zeros((1, 1, 1)), mx.zeros((1, 1, 1)),
                                          mx.zeros((12, 4)), mx.zeros((1, 3, 12)), mx.zeros((1,)), mx.zeros((1,)),
                                          mx.zeros((1, 1, 4, 4)), heads) is None


@pytest.mark.parametrize("transpose", [False, True])
def test_quantized_matmul_either_way_equals_mlx(transpose):
    """x @ W with W quantized along its rows has no MLX kernel on CUDA; the CUDA backend dequantizes W for it
    (runs anywhere: no custom kernel)."""
    weight = mx.random.normal((4, 64, 32), key=mx.random.key(7))  # [batch, rows, columns], quantized along columns
    quantized, scales, biases = mx.quantize(weight, 32, 8)
    x = mx.random.normal((4, 1, 64 if not transpose else 32), key=mx.random.key(8))
    want = mx.quantized_matmul(x, quantized, scales, biases, transpose=transpose, group_size=32, bits=8)
    got = CudaBackend().quantized_matmul(x, quantized, scales, biases, transpose, 32, 8, "affine")
    assert got.shape == want.shape and mx.allclose(got, want, atol=1e-4)


def _cache_slices(rows: int, kv_heads: int, length: int, dims: int, value_dims: int, dtype: mx.Dtype):
    """Keys and values as a batch cache returns them: the first `length` columns of a longer buffer."""
    keys = mx.random.normal((rows, kv_heads, length + 29, dims)).astype(dtype)
    values = mx.random.normal((rows, kv_heads, length + 29, value_dims)).astype(dtype)
    return keys[..., :length, :], values[..., :length, :]


@on_cuda
@pytest.mark.parametrize("dtype,tolerance", [(mx.float32, 1e-5), (mx.bfloat16, 2e-2)])
@pytest.mark.parametrize("heads,kv_heads,dims,value_dims", [(8, 2, 128, 128), (4, 4, 64, 64), (16, 2, 64, 64),
                                                            (2, 1, 256, 256)])
@pytest.mark.parametrize("mask_kind", ["additive", "bool", "window"])
@pytest.mark.parametrize("with_sinks", [False, True])
@pytest.mark.parametrize("length", [301, 3000], ids=["whole", "split"])
def test_decode_attention_equals_the_grouped_ops(dtype, tolerance, heads, kv_heads, dims, value_dims, mask_kind,
                                                 with_sinks, length, monkeypatch):
    """3,000 keys: split over 8 blocks a kv head (cuda_attention.SPLIT_KEYS), then merged; the window then lies in
    the last split alone, the others wholly masked."""
    from mlxd.models import cuda_attention
    from mlxd.models.ops_cuda import decode_attention
    from mlxd.models.ops_mlx import grouped_attention
    monkeypatch.setattr(cuda_attention, "SPLIT_KEYS", True)
    rows = 3
    mx.random.seed(heads + dims)
    queries = mx.random.normal((rows, heads, 1, dims)).astype(dtype)
    keys, values = _cache_slices(rows, kv_heads, length, dims, value_dims, dtype)
    columns = mx.arange(length)[None, :]
    visible = columns >= mx.array([0, 17, length - 51])[:, None]  # left-padded rows of different lengths
    if mask_kind == "window":
        visible = visible & (columns > length - 64)
    mask = visible[:, None, None, :]
    if mask_kind != "bool":
        mask = mx.where(mask, mx.array(0.0, dtype), mx.array(-mx.inf, dtype))
    sinks = mx.random.normal((heads,)) if with_sinks else None
    want = grouped_attention(queries, keys, values, dims**-0.5, mask, sinks)
    got = decode_attention(queries, keys, values, dims**-0.5, mask, sinks)
    assert got is not None and got.shape == want.shape and got.dtype == want.dtype
    error = mx.abs(got.astype(mx.float32) - want.astype(mx.float32)).max().item()
    assert error <= tolerance * max(1.0, mx.abs(want.astype(mx.float32)).max().item())


@on_cuda
def test_the_cuda_backends_masked_decode_attention_equals_mlxs():
    """ops.attention of a masked decode step takes the kernel on the CUDA backend and equals MLX's ops (the
    parity files' batched-rows tests run whole models through it on a CUDA device)."""
    queries = mx.random.normal((2, 4, 1, 64))
    keys, values = _cache_slices(2, 2, 10, 64, 64, mx.float32)
    mask = mx.array([[True] * 10, [False] * 4 + [True] * 6])[:, None, None, :]
    with ops.using("cuda"):
        got = ops.attention(queries, keys, values, 0.125, mask)
    with ops.using("mlx"):
        want = ops.attention(queries, keys, values, 0.125, mask)
    assert mx.allclose(got, want, atol=1e-5)


def test_decode_attention_declines_what_it_does_not_cover():
    from mlxd.models.ops_cuda import decode_attention
    keys = mx.zeros((1, 2, 8, 64))
    for queries, values in ((mx.zeros((1, 4, 2, 64)), keys),      # two queries per row
                            (mx.zeros((1, 4, 1, 80)), mx.zeros((1, 2, 8, 80))),  # a head width not of 32s
                            (mx.zeros((1, 64, 1, 64)), keys)):    # 32 query heads per kv head: too many registers
        k = keys if queries.shape[-1] == 64 else values
        assert decode_attention(queries, k, values, 0.1, None, None) is None
    long = mx.zeros((1, 2, 1025, 64))  # more keys than one block per kv head should walk (no split over keys)
    assert decode_attention(mx.zeros((1, 4, 1, 64)), long, long, 0.1, None, None) is None


def test_keys_split_over_blocks_of_about_512_only_with_split_keys(monkeypatch):
    from mlxd.models import cuda_attention
    assert [cuda_attention._splits(n) for n in (1, 1024, 1025)] == [1, 1, None]
    monkeypatch.setattr(cuda_attention, "SPLIT_KEYS", True)
    assert [cuda_attention._splits(n) for n in (1024, 1025, 2048, 2049, 3000, 10**6)] == [1, 4, 4, 8, 8, 64]


@on_cuda
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
@pytest.mark.parametrize("experts,top_k", [(8, 2), (32, 4), (128, 8), (256, 8), (40, 6)])
@pytest.mark.parametrize("renormalize", [True, False])
def test_the_routing_kernel_chooses_and_weighs_as_mlx(dtype, experts, top_k, renormalize):
    from mlxd.models.ops_cuda import route_experts
    from mlxd.models.ops_mlx import MLXBackend
    # Distinct logits (a permutation of k/16, exact in bfloat16): with a tie at the k-th, either expert is right.
    noise = mx.random.uniform(shape=(3, 37, experts), key=mx.random.key(experts + top_k))
    logits = (mx.argsort(noise, axis=-1).astype(mx.float32) / 16).astype(dtype)
    got = route_experts(logits, top_k, renormalize)
    assert got is not None
    want = MLXBackend().route_experts(logits, top_k, renormalize)
    for (indices, weights) in (got, want):
        assert indices.shape == weights.shape == (3, 37, top_k) and weights.dtype == dtype
    _assert_same_routing(got, want, atol=1e-6 if dtype == mx.float32 else 1e-2)


def _assert_same_routing(got: tuple[mx.array, mx.array], want: tuple[mx.array, mx.array], atol: float) -> None:
    """The same experts with the same weights, whatever the order."""
    got_order, want_order = mx.argsort(got[0], axis=-1), mx.argsort(want[0], axis=-1)
    assert mx.array_equal(mx.take_along_axis(got[0], got_order, -1), mx.take_along_axis(want[0], want_order, -1))
    got_w = mx.take_along_axis(got[1], got_order, -1).astype(mx.float32)
    want_w = mx.take_along_axis(want[1], want_order, -1).astype(mx.float32)
    assert mx.allclose(got_w, want_w, atol=atol)


@on_cuda
@pytest.mark.parametrize("experts,top_k", [(64, 4), (256, 8), (40, 6), (128, 1)])
@pytest.mark.parametrize("normalize,scaling", [(True, 1.8), (False, 1.0)])
def test_the_sigmoid_routing_kernel_chooses_and_weighs_as_mlx(experts, top_k, normalize, scaling, monkeypatch):
    """GLM-4.7-Flash's router: sigmoid scores, the choice biased, the weights the unbiased scores (normalized or
    not) times a scale; through the CUDA backend's kernel (on: SIGMOID_ROUTING), MLX's ops where groups are dropped."""
    from mlxd.models import ops_cuda
    from mlxd.models.ops_mlx import MLXBackend
    # Distinct logits (a permutation, spread) and a small bias: no tie at the k-th choice.
    noise = mx.random.uniform(shape=(3, 37, experts), key=mx.random.key(experts + top_k))
    logits = (mx.argsort(noise, axis=-1).astype(mx.float32) - experts / 2) / 8
    bias = mx.random.uniform(-0.01, 0.01, (experts,), key=mx.random.key(7))
    monkeypatch.setattr(ops_cuda, "SIGMOID_ROUTING", True)
    got = CudaBackend().route_sigmoid(logits, bias, top_k, normalize, scaling)
    want = MLXBackend().route_sigmoid(logits, bias, top_k, normalize, scaling)
    assert got[0].dtype == mx.uint32 and got[1].dtype == mx.float32 and got[0].shape == (3, 37, top_k)
    _assert_same_routing(got, want, atol=1e-6)
    # In the experts' dtype straight from the kernel (GLM's router asks so): the float32 weights rounded once.
    narrow = CudaBackend().route_sigmoid(logits, bias, top_k, normalize, scaling, weights_dtype=mx.bfloat16)
    assert narrow[1].dtype == mx.bfloat16 and mx.array_equal(narrow[0], got[0])
    assert mx.array_equal(narrow[1], got[1].astype(mx.bfloat16))
    if experts % 4 == 0 and top_k <= experts // 4:  # two of four groups dropped: MLX's ops
        grouped = CudaBackend().route_sigmoid(logits, bias, top_k, normalize, scaling, n_group=4, topk_group=2)
        _assert_same_routing(grouped, MLXBackend().route_sigmoid(logits, bias, top_k, normalize, scaling, 4, 2), 0)


@on_cuda
@pytest.mark.parametrize("dtype,tolerance", [(mx.float32, 1e-5), (mx.bfloat16, 2e-2)])
def test_the_combining_kernel_sums_as_mlx(dtype, tolerance):
    from mlxd.models.ops_cuda import combine_experts
    from mlxd.models.ops_mlx import MLXBackend
    y = mx.random.normal((2, 9, 4, 96), key=mx.random.key(3)).astype(dtype)
    weights = mx.random.uniform(shape=(2, 9, 4), key=mx.random.key(4)).astype(dtype)
    got, want = combine_experts(y, weights), MLXBackend().combine_experts(y, weights)
    assert got.shape == want.shape == (2, 9, 96) and got.dtype == want.dtype
    assert mx.abs(got.astype(mx.float32) - want.astype(mx.float32)).max().item() <= tolerance * 4
    # The shared experts' output added in the same pass: the very values of the kernel's sum and an add apart.
    shared = mx.random.normal((2, 9, 96), key=mx.random.key(5)).astype(dtype)
    assert mx.array_equal(combine_experts(y, weights, shared), got + shared)


@on_cuda
@pytest.mark.parametrize("dtype,tolerance", [(mx.float32, 1e-5), (mx.bfloat16, 2e-2)])
@pytest.mark.parametrize("mask_kind", [None, "additive", "bool"])
@pytest.mark.parametrize("length", [77, 2500], ids=["whole", "split"])
def test_latent_attention_takes_the_kernel_and_equals_mlxs_ops(dtype, tolerance, mask_kind, length, monkeypatch):
    """GLM's absorbed decode attention (every head over the one cached latent, plus the rope part); 2,500 keys split
    over blocks (cuda_attention.SPLIT_KEYS)."""
    from mlxd.models import cuda_attention
    from mlxd.models.ops_cuda import CudaBackend, decode_attention
    from mlxd.models.ops_mlx import MLXBackend
    monkeypatch.setattr(cuda_attention, "SPLIT_KEYS", True)
    rows, heads, latent_dims, rope_dims = 3, 20, 512, 64
    keys = mx.random.split(mx.random.key(11), 4)
    q_latent = mx.random.normal((rows, heads, 1, latent_dims), key=keys[0]).astype(dtype)
    q_rot = mx.random.normal((rows, heads, 1, rope_dims), key=keys[1]).astype(dtype)
    latent = mx.random.normal((rows, 1, length + 5, latent_dims), key=keys[2]).astype(dtype)[:, :, :length]
    k_rot = mx.random.normal((rows, 1, length + 5, rope_dims), key=keys[3]).astype(dtype)[:, :, :length]
    mask = None
    if mask_kind is not None:
        visible = (mx.arange(length)[None, :] >= mx.array([0, 9, length - 7])[:, None])[:, None, None, :]
        mask = visible if mask_kind == "bool" else mx.where(visible, mx.array(0.0, dtype), mx.array(-mx.inf, dtype))
    scale = (latent_dims + rope_dims) ** -0.5
    want = MLXBackend().latent_attention(q_latent, q_rot, latent, k_rot, scale, mask)
    got = CudaBackend().latent_attention(q_latent, q_rot, latent, k_rot, scale, mask)
    broadcast = mx.broadcast_to(latent, (rows, heads, length, latent_dims))
    rope_keys = mx.broadcast_to(k_rot, (rows, heads, length, rope_dims))
    assert decode_attention(q_latent, broadcast, broadcast, scale, mask, None, q_rot, rope_keys) is not None
    assert got.shape == want.shape == (rows, heads, 1, latent_dims) and got.dtype == want.dtype
    error = mx.abs(got.astype(mx.float32) - want.astype(mx.float32)).max().item()
    assert error <= tolerance * max(1.0, mx.abs(want.astype(mx.float32)).max().item())


def test_kernel_sources_reach_mlx_without_comments_or_indentation():
    """MLX copies and hashes a custom kernel's whole source at every call, so cuda_jit hands it over compacted: the
    code lines kept in order, `//` comments gone except inside strings (inline PTX), blank lines dropped."""
    from mlxd.models.cuda_experts_few import source
    from mlxd.models.cuda_jit import compact
    asm = 'asm("{ mov.b32 %0, %1; } // kept" : "=r"(x) : "r"(y));'
    text = f"  int a = 1;  // why\n\n    {asm}  // gone\n// alone\n#pragma unroll\n"
    assert compact(text) == f"int a = 1;\n{asm}\n#pragma unroll\n"
    full = source(2)
    assert len(compact(full)) < 0.7 * len(full)
    assert compact(compact(full)) == compact(full)
