"""gpt-oss's MXFP4 experts (quantization_config.quant_method "mxfp4", *_blocks + *_scales) as MLX mxfp4 arrays
without dequantizing (loading/mxfp4.py): exact against the same weights unpacked by transformers (the gpt_oss_dense
fixture), and usable as they are by MLX's quantized matmuls."""

from __future__ import annotations

import json
import types
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlxd.errors import ModelLoadError
from mlxd.loading import loader, mxfp4
from mlxd.loading import weights as wts
from mlxd.loading.config import quantization
from mlxd.models import Architecture

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
EXPERTS = [f"model.layers.{n}.mlp.experts.{name}" for n in range(3) for name in ("gate_up_proj", "down_proj")]
# E2M1, sign-magnitude: codes 0-7 positive, 8-15 their negatives (MOE_NOTES §3.4, transformers' FP4_VALUES).
FP4 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)
MXFP4 = {"group_size": 32, "bits": 4, "mode": "mxfp4"}


@pytest.fixture(scope="module")
def packed():
    return mx.load(str(PARITY / "gpt_oss" / "model.safetensors"))


@pytest.fixture(scope="module")
def dense():
    """transformers' in-memory experts, [E, in, out]: gate_up [6, 64, 128], down [6, 64, 64]."""
    return mx.load(str(PARITY / "gpt_oss_dense" / "model.safetensors"))


def bits(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("name", EXPERTS)
def test_dequantized_equals_transformers_weights_bit_for_bit(packed, dense, name):
    """Signed zeros included (all 16 codes occur); scales differ from block to block, so a scale applied to the
    wrong block would show."""
    weight, scales = mxfp4.to_mlx(packed[name + "_blocks"], packed[name + "_scales"])
    assert weight.dtype == mx.uint32 and scales.dtype == mx.uint8
    assert weight.shape == (*packed[name + "_blocks"].shape[:-2], packed[name + "_blocks"].shape[-2] * 4)
    got = mx.dequantize(weight, scales, **MXFP4, dtype=mx.float32)
    assert np.array_equal(bits(got), bits(dense[name].swapaxes(-1, -2)))  # [E, out, in]: nn.Linear orientation


def _encode(codes: np.ndarray, exponents: np.ndarray) -> tuple[mx.array, mx.array]:
    """An independent MXFP4 encoder from MOE_NOTES §3.4: codes [out, in] (4-bit), E8M0 bytes [out, in/32];
    byte j of a block holds element 2j in its low nibble and 2j + 1 in its high nibble."""
    grouped = codes.reshape(codes.shape[0], -1, 32)
    blocks = (grouped[..., 0::2] | (grouped[..., 1::2] << 4)).astype(np.uint8)
    return mx.array(blocks), mx.array(exponents.astype(np.uint8))


def test_nibble_order_scale_bias_and_codes():
    """Each of the 16 codes at every position in its byte, scales 2^(s - 127) from 2^-8 to 2^3."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (6, 96))
    codes[0, :32] = np.repeat(np.arange(16), 2)
    codes[1, :32] = np.tile(np.arange(16), 2)
    exponents = rng.integers(119, 131, (6, 3))
    weight, scales = mxfp4.to_mlx(*_encode(codes, exponents))
    want = FP4[codes] * np.exp2(np.repeat(exponents - 127.0, 32, axis=1)).astype(np.float32)
    got = mx.dequantize(weight, scales, **MXFP4, dtype=mx.float32)
    assert np.array_equal(bits(got), want.view(np.uint32))
    swapped, _ = mxfp4.to_mlx(*_encode(codes.reshape(6, -1, 2)[..., ::-1].reshape(6, 96), exponents))
    assert not np.array_equal(np.asarray(mx.dequantize(swapped, scales, **MXFP4, dtype=mx.float32)), want)


@pytest.mark.parametrize("name", EXPERTS)
def test_quantized_matmul_equals_the_float_product(packed, dense, name):
    """mx.quantized_matmul(x, weight, scales, transpose=True) is transformers' x @ W for W [in, out], per expert,
    as close to the float64 product as MLX's own float32 matmul on the dense weights is."""
    weight, scales = mxfp4.to_mlx(packed[name + "_blocks"], packed[name + "_scales"])
    x = mx.random.normal((7, dense[name].shape[1]), key=mx.random.key(1))
    for e in range(dense[name].shape[0]):
        want = np.asarray(x, dtype=np.float64) @ np.asarray(dense[name][e], dtype=np.float64)
        got = mx.quantized_matmul(x, weight[e], scales[e], transpose=True, **MXFP4)
        float32 = x @ dense[name][e]
        bound = max(2e-6 * np.abs(want).max(), 2 * np.abs(np.asarray(float32) - want).max())
        assert np.abs(np.asarray(got) - want).max() <= bound


@pytest.mark.parametrize("name", EXPERTS)
def test_gather_qmm_routes_tokens_to_their_experts(packed, dense, name):
    """mx.gather_qmm over the stacked experts: token t times expert idx[t, j], for each of its top-4 experts."""
    weight, scales = mxfp4.to_mlx(packed[name + "_blocks"], packed[name + "_scales"])
    tokens, top_k, n_in = 9, 4, dense[name].shape[1]
    x = mx.random.normal((tokens, 1, 1, n_in), key=mx.random.key(2))
    idx = mx.array(np.random.default_rng(3).permuted(np.tile(np.arange(6), (tokens, 1)), axis=1)[:, :top_k])
    got = mx.gather_qmm(x, weight, scales, rhs_indices=idx, transpose=True, **MXFP4)  # [tokens, k, 1, out]
    w64 = np.asarray(dense[name], dtype=np.float64)
    want = np.einsum("ti,tkio->tko", np.asarray(x, dtype=np.float64)[:, 0, 0], w64[np.asarray(idx)])
    assert got.shape == (tokens, top_k, 1, w64.shape[-1])
    assert np.abs(np.asarray(got)[:, :, 0] - want).max() <= 2e-6 * np.abs(want).max()


def test_unpack_renames_pairs_to_mlx_quantized_names(packed):
    unpacked = mxfp4.unpack(dict(packed))
    assert not any(k.endswith(("_blocks", "_scales")) for k in unpacked)
    for name in EXPERTS:
        assert unpacked[name + ".weight"].dtype == mx.uint32 and unpacked[name + ".scales"].dtype == mx.uint8
        assert mx.array_equal(unpacked[name + "_bias"], packed[name + "_bias"])  # biases stay float, as named
    assert mx.array_equal(unpacked["model.layers.0.self_attn.sinks"], packed["model.layers.0.self_attn.sinks"])
    assert len(unpacked) == len(packed)


def test_unpack_names_broken_pairs(packed):
    name = EXPERTS[0]
    without_scales = {k: v for k, v in packed.items() if k != name + "_scales"}
    with pytest.raises(ModelLoadError, match=f"{name}_blocks has no {name}_scales"):
        mxfp4.unpack(without_scales)
    without_blocks = {k: v for k, v in packed.items() if k != name + "_blocks"}
    with pytest.raises(ModelLoadError, match=f"{name}_scales has no {name}_blocks"):
        mxfp4.unpack(without_blocks)
    with pytest.raises(ModelLoadError, match="do not pair"):
        mxfp4.to_mlx(packed[name + "_blocks"], packed[name + "_scales"][..., :1], name)
    with pytest.raises(ModelLoadError, match="must be uint8"):
        mxfp4.to_mlx(packed[name + "_blocks"].astype(mx.int8), packed[name + "_scales"], name)


def test_cpu_dequantize_path_gives_the_float32_experts(packed, dense):
    """What load_model does on the CPU when float32 fits (plan_dtype dequantizes, then casts): the experts come
    out as transformers' float32 weights, and float32_bytes counts them at their dequantized size."""
    quant = quantization(json.loads((PARITY / "gpt_oss" / "config.json").read_text()))
    unpacked = mxfp4.unpack(dict(packed))
    assert wts.float32_bytes(unpacked, quant) == sum(v.size * 4 for v in dense.values())
    floats = wts.cast_weights(wts.dequantize_weights(unpacked, quant), "float32")
    for name in EXPERTS:
        assert np.array_equal(bits(floats[name + ".weight"]), bits(dense[name].swapaxes(-1, -2)))


@pytest.mark.parametrize("layout", ["config.json", "config_v4.json"])
def test_config_maps_mxfp4_to_mlx_quantization(layout):
    config = json.loads((PARITY / "gpt_oss" / layout).read_text())
    assert quantization(config) == {"quant_method": "mxfp4", **MXFP4}
    assert quantization(json.loads((PARITY / "gpt_oss_dense" / layout).read_text())) is None


@pytest.mark.parametrize("method", ["gptq", "awq", "fp8", "bitsandbytes", "compressed-tensors", "mxfp8"])
def test_other_quant_methods_are_refused_by_name(method):
    with pytest.raises(ModelLoadError, match=f"unsupported quantization method '{method}'"):
        quantization({"quantization_config": {"quant_method": method, "bits": 4, "group_size": 128}})


def test_loader_hands_sanitize_mlx_mxfp4_arrays(monkeypatch):
    """Before the model's sanitize runs, load_model turns the pairs into MLX-quantized names (the gpt_oss model
    file places them); a folder without quant_method "mxfp4" keeps its tensors as stored."""
    seen: list[dict[str, mx.array]] = []

    class Stop(Exception):
        pass

    class Model:
        def __init__(self, args):
            self.args = args

        def sanitize(self, weights):
            seen.append(weights)
            raise Stop

    module = types.SimpleNamespace(ModelArgs=types.SimpleNamespace(from_dict=dict), Model=Model)
    monkeypatch.setattr(loader, "architecture", lambda model_type: Architecture(model_type, module, False))
    for folder in ("gpt_oss", "gpt_oss_dense"):
        with pytest.raises(Stop):
            loader.load_model(PARITY / folder)
    from_mxfp4, from_dense = seen
    assert from_mxfp4[EXPERTS[0] + ".weight"].dtype == mx.uint32 and EXPERTS[0] + ".scales" in from_mxfp4
    assert not any(k.endswith(("_blocks", "_scales")) for k in from_mxfp4)
    assert from_dense[EXPERTS[0]].dtype == mx.float32 and EXPERTS[0] + ".weight" not in from_dense


def test_float32_size_counts_mxfp4_experts_at_their_unpacked_size(packed, dense):
    """The CPU dtype policy weighs a float32 copy: MXFP4 experts count as the float32 matrices they decode to,
    so gpt-oss-20b (~13 GB in MXFP4, ~80 GB as float32) keeps its quantized weights on a machine they would not fit."""
    quant = quantization({"quantization_config": {"quant_method": "mxfp4"}})
    unpacked = mxfp4.unpack(packed)
    assert wts.float32_bytes(unpacked, quant) == sum(w.size * 4 for w in dense.values())
    plan = loader.plan_dtype("auto", on_gpu=False, checkpoint_dtype="bfloat16", quantized=True,
                             float32_bytes=80 << 30, ram_bytes=24 << 30)
    assert (plan.dtype, plan.dequantize) == (None, False)
    assert "(MLX-quantized) on CPU" in plan.note and "80.0 GiB" in plan.note
