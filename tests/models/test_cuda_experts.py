"""The CUDA backend's routed-experts matmul (models/cuda_experts.py) against MLX's gathered matmuls: on a CUDA
device, for every weight kind it decodes (floats, affine 4 and 8 bits, MXFP4), activations in float32 and
bfloat16, one token (one pair per expert) and several (experts shared by many pairs, chunks cut short), inputs one
row per token broadcast over its experts (gate/up) and one per pair (down), and output widths that cut a block's
32 rows. Everywhere: the shapes and kinds it declines (MLX's kernels then)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxd.models import cuda_experts, cuda_experts_few, ops
from mlxd.models.base import ExpertQuantization
from mlxd.models.ops_cuda import CudaBackend

on_cuda = pytest.mark.skipif(not mx.cuda.is_available(), reason="needs MLX's CUDA backend")

EXPERTS, TOP_K = 16, 4
ALL_KINDS = (0, 1, 2)  # cuda_experts.SLICES for every kind of weights: float, affine, MXFP4


def _weights(kind: str, out_dims: int, in_dims: int, dtype: mx.Dtype):
    w = mx.random.normal((EXPERTS, out_dims, in_dims)) * in_dims**-0.5
    if kind == "float":
        return w.astype(dtype), None
    mode, bits, group = {"affine4": ("affine", 4, 64), "affine8": ("affine", 8, 64),
                         "mxfp4": ("mxfp4", 4, 32)}[kind]
    packed, scales, *biases = mx.quantize(w, group, bits, mode=mode)
    if biases:
        scales, biases = scales.astype(dtype), [biases[0].astype(dtype)]
    return packed, ExpertQuantization(group, bits, mode, scales, biases[0] if biases else None)


@pytest.fixture(autouse=True, params=["chunked", "few"])
def kernel(request, monkeypatch):
    """Each of the two kernels at every size it can take: which one (or MLX's) takes a size is a speed choice
    (`cuda_experts.kernel_for`)."""
    monkeypatch.setattr(cuda_experts, "FORCE", request.param)
    return request.param


def _both(x, indices, weight, quant):
    with ops.using("mlx"):
        want = ops.gather_matmul(x, indices, weight, quant)
    got = cuda_experts.gather_matmul(x, indices, weight, quant)
    assert got is not None
    mx.eval(want, got)
    return want, got


@on_cuda
@pytest.mark.parametrize("kind", ["float", "affine4", "affine8", "mxfp4"])
@pytest.mark.parametrize("dtype,tolerance", [(mx.float32, 2e-4), (mx.bfloat16, 2e-2)])
@pytest.mark.parametrize("tokens", [1, 3, 37])
@pytest.mark.parametrize("per_pair", [False, True])
def test_equals_mlx_gathered_matmul(kind, dtype, tolerance, tokens, per_pair):
    mx.random.seed(tokens * 10 + per_pair)
    out_dims, in_dims = (40, 256) if per_pair else (96, 512)
    weight, quant = _weights(kind, out_dims, in_dims, dtype)
    logits = mx.random.normal((2, tokens, EXPERTS))
    indices = mx.argpartition(logits, kth=-TOP_K, axis=-1)[..., -TOP_K:].astype(mx.uint32)
    shape = (2, tokens, TOP_K, 1, in_dims) if per_pair else (2, tokens, 1, 1, in_dims)
    x = mx.random.normal(shape).astype(dtype)
    want, got = _both(x, indices, weight, quant)
    assert got.shape == want.shape == (2, tokens, TOP_K, 1, out_dims) and got.dtype == want.dtype
    scale = mx.abs(want).max().item()
    assert mx.abs(got.astype(mx.float32) - want.astype(mx.float32)).max().item() <= tolerance * max(scale, 1.0)


# The few-pairs kernel's other choices (`bench expert_matmul --rows-per-warp 2`, `--loads-ahead 2`), each with
# (out, in) widths of its own: an output width that cuts a block, and for loads ahead rows long enough that a lane
# makes two loads or more (1,536 4-bit values: half the lanes two, half one).
OTHER_CHOICES = {"ROWS_PER_WARP": ((40, 256), (96, 512)), "LOADS_AHEAD": ((40, 1536), (96, 2048))}


@on_cuda
@pytest.mark.parametrize("choice", sorted(OTHER_CHOICES))
@pytest.mark.parametrize("kind", ["float", "affine4", "mxfp4"])
@pytest.mark.parametrize("tokens", [1, 37])
def test_the_few_pairs_kernels_other_choices_equal_mlx_gathered_matmul(choice, kind, tokens, kernel, monkeypatch):
    """The few-pairs kernel with 2 weight rows a warp (16 a block), or with a lane's next loads issued before its
    arithmetic, bfloat16, both input layouts."""
    if kernel != "few":
        pytest.skip("a choice of the few-pairs kernel")
    monkeypatch.setattr(cuda_experts_few, choice, 2)
    for per_pair, (out_dims, in_dims) in zip((True, False), OTHER_CHOICES[choice]):
        mx.random.seed(tokens)
        weight, quant = _weights(kind, out_dims, in_dims, mx.bfloat16)
        indices = mx.argpartition(mx.random.normal((tokens, EXPERTS)), kth=-TOP_K, axis=-1)[..., -TOP_K:]
        shape = (tokens, TOP_K, 1, in_dims) if per_pair else (tokens, 1, 1, in_dims)
        want, got = _both(mx.random.normal(shape).astype(mx.bfloat16), indices.astype(mx.uint32), weight, quant)
        scale = mx.abs(want).max().item()
        assert mx.abs(got.astype(mx.float32) - want.astype(mx.float32)).max().item() <= 2e-2 * max(scale, 1.0)


@on_cuda
def test_many_pairs_of_one_expert_fill_several_chunks():
    """Every token routed to the same 2 experts: 2 blocks' worth of pairs, 50 each, in chunks of 8."""
    weight, quant = _weights("affine4", 64, 256, mx.bfloat16)
    indices = mx.broadcast_to(mx.array([3, 11], mx.uint32), (50, 2))
    x = mx.random.normal((50, 1, 1, 256)).astype(mx.bfloat16)
    want, got = _both(x, indices, weight, quant)
    assert mx.abs(got.astype(mx.float32) - want.astype(mx.float32)).max().item() < 2e-2 * mx.abs(want).max().item()


def test_declines_what_it_does_not_decode(kernel, monkeypatch):
    weight, quant = _weights("affine4", 64, 256, mx.float32)
    x, indices = mx.ones((3, 1, 1, 256)), mx.zeros((3, 2), mx.uint32)
    two_bits = ExpertQuantization(64, 2, "affine", quant.scales, quant.biases)
    assert cuda_experts.gather_matmul(x, indices, weight, two_bits) is None
    nvfp4 = ExpertQuantization(16, 4, "nvfp4", quant.scales, None)
    assert cuda_experts.gather_matmul(x, indices, weight, nvfp4) is None
    many = mx.zeros((cuda_experts.MAX_PAIRS // 2 + 1, 2), mx.uint32)
    monkeypatch.setattr(cuda_experts, "SLICES", ())  # past MAX_PAIRS unless sliced (the slices' tests below)
    assert cuda_experts.gather_matmul(mx.ones((many.shape[0], 1, 1, 256)), many, weight, quant) is None
    assert cuda_experts.gather_matmul(mx.ones((3, 2, 2, 256)), indices, weight, quant) is None  # 2 rows a pair
    if kernel == "few":  # float weights of another dtype than the activations: its loads are of the activations'
        floats = mx.ones((4, 64, 256), mx.float32)
        assert cuda_experts.gather_matmul(x.astype(mx.bfloat16), indices, floats, None) is None


def test_mxfp4_codes_decode_through_float16_to_their_values_over_2_to_the_14():
    """cuda_experts_code.E2M1_WORD's bit placement, as the NumPy mirror of the kernels runs it, for every code at
    every place in a word, and E8M0_SCALE_X16384's exponent arithmetic for every scale it computes exactly."""
    from bench.kernels.mirror_experts_few import e2m1_word

    table = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]
    for code in range(16):
        for place in range(8):
            decoded = e2m1_word(code << (4 * place) | (code ^ 9) << (4 * ((place + 3) % 8))) * 2**14
            assert decoded[place] == table[code] and decoded[(place + 3) % 8] == table[code ^ 9]
    s = np.arange(241, dtype=np.uint32)
    assert ((s + 14) << 23).view(np.float32).tolist() == [2.0 ** (e - 127 + 14) for e in range(241)]


def test_the_few_pairs_kernel_sizes_its_chunks_by_the_pairs_an_expert_holds():
    """One token: one pair an expert. Qwen3-30B-A3B (8 of 128) at 16 tokens: 128 pairs over ~82 experts chosen."""
    assert [cuda_experts_few.largest_chunk(t, 8, 128) for t in (1, 4, 16, 64, 256)] == [1, 1, 2, 4, 8]
    assert [cuda_experts_few.largest_chunk(t, 4, 32) for t in (1, 4, 16)] == [1, 2, 2]
    # at 8 rows a warp a warp's 32 lanes hold the sums of 4 pairs at most
    assert [cuda_experts_few.largest_chunk(t, 8, 128, rows_per_warp=8) for t in (16, 256)] == [2, 4]


@on_cuda
@pytest.mark.parametrize("kind", ["float", "affine4", "mxfp4"])
@pytest.mark.parametrize("per_pair", [False, True])
def test_pairs_past_the_most_a_call_takes_go_in_token_slices_and_equal_mlx(kind, per_pair, monkeypatch):
    """SLICES: a prefill chunk of 2 x 550 tokens of 4 experts (4,400 pairs, past MAX_PAIRS) in 3 calls (bfloat16
    experts too, which it leaves to MLX's kernel unless told)."""
    monkeypatch.setattr(cuda_experts, "SLICES", ALL_KINDS)
    mx.random.seed(per_pair)
    weight, quant = _weights(kind, 40, 256, mx.bfloat16)
    indices = mx.argpartition(mx.random.normal((2, 550, EXPERTS)), kth=-TOP_K, axis=-1)[..., -TOP_K:]
    shape = (2, 550, TOP_K, 1, 256) if per_pair else (2, 550, 1, 1, 256)
    want, got = _both(mx.random.normal(shape).astype(mx.bfloat16), indices.astype(mx.uint32), weight, quant)
    assert got.shape == want.shape == (2, 550, TOP_K, 1, 40)
    scale = mx.abs(want).max().item()
    assert mx.abs(got.astype(mx.float32) - want.astype(mx.float32)).max().item() <= 2e-2 * max(scale, 1.0)


@pytest.mark.parametrize("per_pair", [False, True])
def test_token_slices_put_together_equal_the_whole(per_pair, monkeypatch):
    """The slicing and putting back of `_in_slices`, with MLX's gathered matmul as each slice's kernel (any device;
    the test above runs the kernels)."""
    def mlx_gather(x, indices, weight, quant):
        assert indices.size <= cuda_experts.MAX_PAIRS
        with ops.using("mlx"):
            return ops.gather_matmul(x, indices, weight, quant)
    monkeypatch.setattr(cuda_experts, "gather_matmul", mlx_gather)
    weight, quant = _weights("affine4", 40, 256, mx.float32)
    indices = mx.argpartition(mx.random.normal((2, 550, EXPERTS)), kth=-TOP_K, axis=-1)[..., -TOP_K:]
    x = mx.random.normal((2, 550, TOP_K, 1, 256) if per_pair else (2, 550, 1, 1, 256))
    got = cuda_experts._in_slices(x, indices.astype(mx.uint32), weight, quant)
    with ops.using("mlx"):
        want = ops.gather_matmul(x, indices.astype(mx.uint32), weight, quant)
    assert got is not None and got.shape == want.shape == (2, 550, TOP_K, 1, 40)
    assert mx.abs(got - want).max().item() < 1e-4


def test_token_slices_keep_each_calls_pairs_within_the_most_it_takes(monkeypatch):
    """As few slices as fit, as even as can be; past MAX_PAIRS the kernels take pairs only of the kinds in SLICES
    (quantized ones as set), and then leave them unsorted."""
    most = cuda_experts.MAX_PAIRS
    assert cuda_experts.token_slices(most // 4, 4) == [most // 4]
    assert cuda_experts.token_slices(1100, 4) == [367, 367, 366]
    assert cuda_experts.token_slices(2048, 8) == [256] * 8
    assert cuda_experts.token_slices(3, most + 1) == []
    for tokens in (1, 511, 513, 2047, 4099):
        for top_k in (1, 2, 4, 8):
            slices = cuda_experts.token_slices(tokens, top_k)
            assert sum(slices) == tokens and max(slices) * top_k <= most
            assert len(slices) == 1 or min(slices) * top_k >= most // 2 - top_k
    monkeypatch.setattr(cuda_experts, "FORCE", None)
    affine4 = _weights("affine4", 64, 256, mx.float32)[1]
    assert cuda_experts.kernel_for(2 * most, affine4) == "few" and cuda_experts.kernel_for(2 * most, None) is None
    assert not CudaBackend().sorts_experts(2 * most, lambda: [affine4])
    assert CudaBackend().sorts_experts(2 * most, lambda: [None])
    monkeypatch.setattr(cuda_experts, "SLICES", ())
    assert cuda_experts.kernel_for(2 * most, affine4) is None and CudaBackend().sorts_experts(2 * most,
                                                                                             lambda: [affine4])
    monkeypatch.setattr(cuda_experts, "SLICES", ALL_KINDS)
    assert cuda_experts.kernel_for(2 * most, None) == "chunked"


def test_each_size_goes_to_the_kernel_measured_fastest_and_only_mlx_sorts(monkeypatch):
    """Affine 4-bit experts: the few-pairs kernel at every size to MAX_PAIRS; MXFP4: it to 1,024 pairs, then the
    chunked one; bfloat16: MLX's kernel below 32 pairs, the few-pairs one to 512, then the chunked one; 8-bit
    weights: the chunked kernel from 256 pairs. Past MAX_PAIRS quantized weights go in slices (as the largest size),
    bfloat16 ones to MLX's kernel. What MLX's kernel computes is sorted by expert from 64 pairs as before; what the
    kernels take is not."""
    monkeypatch.setattr(cuda_experts, "FORCE", None)  # the table, not the fixture's one kernel
    affine4 = _weights("affine4", 64, 256, mx.float32)[1]
    mxfp4 = _weights("mxfp4", 64, 256, mx.float32)[1]
    affine8 = _weights("affine8", 64, 256, mx.float32)[1]
    sizes = (8, 31, 32, 255, 256, 512, 513, 1024, 1025, 2048, 2049)
    assert [cuda_experts.kernel_for(n, affine4) for n in sizes] == ["few"] * 11
    assert [cuda_experts.kernel_for(n, mxfp4) for n in sizes] == ["few"] * 8 + ["chunked"] * 3
    assert [cuda_experts.kernel_for(n, None) for n in sizes] == [None] * 2 + ["few"] * 4 + ["chunked"] * 4 + [None]
    assert [cuda_experts.kernel_for(n, affine8) for n in sizes] == [None] * 4 + ["chunked"] * 7
    x = mx.ones((8, 1, 1, 256))
    assert cuda_experts.gather_matmul(x, mx.zeros((8, 2), mx.uint32), mx.ones((EXPERTS, 64, 256)), None) is None
    cuda = CudaBackend()
    assert [cuda.sorts_experts(n, lambda: [affine4, affine4]) for n in sizes] == [False] * 11
    assert [cuda.sorts_experts(n, lambda: [affine4, None]) for n in sizes] == [False] * 10 + [True]
    assert [cuda.sorts_experts(n, lambda: [mxfp4]) for n in sizes] == [False] * 11
    # weights the kernels do not decode (3 bits here) go to MLX's kernel at every size, sorted as it wants them
    packed, scales, biases = mx.quantize(mx.zeros((EXPERTS, 64, 256)), 64, 3)
    three = ExpertQuantization(64, 3, "affine", scales, biases)
    assert [cuda.sorts_experts(n, lambda: [affine4, three]) for n in sizes] == [False] * 3 + [True] * 8
    # a decode step's few pairs are never sorted, so their weights are not even asked for
    assert cuda.sorts_experts(8, lambda: pytest.fail("asked")) is False
