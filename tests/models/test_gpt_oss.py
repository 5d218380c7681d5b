"""gpt_oss beyond the shared parity tests (test_model_parity.py): its MXFP4 files give the dense folder's logits,
kept quantized or not; every layout its experts come in (transformers' float tensors, MXFP4 pairs, mlx-lm's
conversions) sanitizes to the same arrays; its config defaults are GptOssConfig's; YaRN's `truncate: false` matters."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from mlxd.loading import mxfp4
from mlxd.loading import weights as wts
from mlxd.loading.config import normalize_config
from mlxd.loading.loader import load_model
from mlxd.models import gpt_oss, ops
from mlxd.models.moe import QuantizedSwitchLinear
from tests.helpers.parity import PARITY, copy_model_folder
from tests.helpers.parity_checks import greedy_with_cache

LOGIT_TOL = 1e-3  # against transformers, as in test_model_parity.py
SELF_TOL = 1e-4


@pytest.fixture(scope="module")
def expected():
    return mx.load(str(PARITY / "gpt_oss" / "expected.safetensors"))


@pytest.fixture(scope="module")
def dense_logits(expected):
    return load_model(PARITY / "gpt_oss_dense", dtype="float32").model(expected["input_ids"])


@pytest.mark.parametrize("dtype,quantized", [("float32", False), ("keep", True)])
def test_mxfp4_files_give_the_dense_folders_logits(expected, dense_logits, dtype, quantized):
    """Dequantized on load (the CPU's float32 policy) or kept in MLX's mxfp4 mode (gather_qmm, as on a GPU)."""
    loaded = load_model(PARITY / "gpt_oss", dtype=dtype, fuse=True)
    assert loaded.quantized == quantized
    experts = loaded.model.layers[0].mlp.switch_mlp.gate_up_proj
    assert isinstance(experts, QuantizedSwitchLinear) == quantized
    if quantized:
        assert (experts.mode, experts.bits, experts.group_size) == ("mxfp4", 4, 32)
    logits = loaded.model(expected["input_ids"])
    assert mx.abs(logits - dense_logits).max().item() < SELF_TOL
    assert mx.abs(logits[0] - expected["logits"]).max().item() < LOGIT_TOL


@pytest.mark.parametrize("dtype", ["float32", "keep"])
def test_mlx_kernels_as_on_a_gpu_give_the_same_logits_in_chunks_and_steps(expected, dtype):
    """What a GPU runs (MLX's fused attention with sinks and window masks, the MXFP4 experts kept quantized
    through gather_qmm), here on the CPU: transformers' logits, chunks crossing the window, greedy ids."""
    model = load_model(PARITY / "gpt_oss", dtype=dtype, fuse=True).model
    tokens = expected["input_ids"]
    with ops.using("mlx"):
        cache = model.make_cache()
        chunked = mx.concatenate([model(tokens[:, i : i + 12], cache) for i in range(0, 40, 12)], axis=1)
        assert mx.abs(chunked[0] - expected["logits"]).max().item() < LOGIT_TOL
        assert mx.abs(chunked - model(tokens)).max().item() < SELF_TOL
        assert greedy_with_cache(model, tokens, 16) == expected["greedy_ids"].tolist()


def _model(fused: frozenset[str] = frozenset()) -> gpt_oss.Model:
    config = normalize_config(json.loads((PARITY / "gpt_oss" / "config.json").read_text()))
    return gpt_oss.Model(gpt_oss.ModelArgs.from_dict(config), fused)


def _raw(arch: str) -> dict[str, mx.array]:
    return wts.read_weights([PARITY / arch / "model.safetensors"])


def test_every_expert_layout_sanitizes_to_the_same_arrays():
    model = _model()
    dense = model.sanitize(_raw("gpt_oss_dense"))
    packed = model.sanitize(mxfp4.unpack(_raw("gpt_oss")))
    assert dense.keys() == {k for k in packed if not k.endswith(".scales")}
    experts = "model.layers.2.mlp.switch_mlp."
    assert dense[experts + "gate_proj.weight"].shape == (6, 64, 64)  # [E, out, in]: gate rows only
    for name in ("gate_proj", "up_proj", "down_proj"):
        key = f"{experts}{name}.weight"
        unpacked = mx.dequantize(packed[key], packed[f"{experts}{name}.scales"], group_size=32, bits=4, mode="mxfp4")
        assert mx.array_equal(unpacked.astype(mx.float32), dense[key]), name
        assert mx.array_equal(packed[f"{experts}{name}.bias"], dense[f"{experts}{name}.bias"]), name
    # Row-contiguous, as MLX's CUDA quantized matmul needs (a strided view would read the interleaved rows).
    assert all(memoryview(v).c_contiguous for a in (dense, packed) for k, v in a.items() if ".switch_mlp." in k)
    # mlx-lm's conversions name the experts `experts.{gate,up,down}_proj`; its own output is left as it is.
    as_mlx_lm = {k.replace(".switch_mlp.", ".experts."): v for k, v in packed.items()}
    assert model.sanitize(as_mlx_lm).keys() == packed.keys()
    assert model.sanitize(packed).keys() == packed.keys()


def test_sanitize_for_a_fused_model_joins_the_halves_and_runs_on_its_own_output():
    model = _model()
    fused = _model(frozenset(model.fusable_projections()))
    split = model.sanitize(_raw("gpt_oss_dense"))
    joined = fused.sanitize(split)
    gate_up = joined["model.layers.0.mlp.switch_mlp.gate_up_proj.weight"]
    assert mx.array_equal(gate_up, mx.concatenate([split["model.layers.0.mlp.switch_mlp.gate_proj.weight"],
                                                   split["model.layers.0.mlp.switch_mlp.up_proj.weight"]], axis=1))
    again = fused.sanitize(joined)
    assert again.keys() == joined.keys() and all(mx.array_equal(again[k], joined[k]) for k in joined)


def test_a_folder_as_mlx_lm_converts_it_loads_with_its_8_bit_routers(tmp_path, expected):
    """mlx-lm writes gpt-oss with experts under `mlp.experts`, 8-bit routers by a per-layer override keyed
    `mlp.router` (its quant_predicate), and a `quantization` block in MLX's terms."""
    reference = load_model(PARITY / "gpt_oss", dtype="keep").model
    nn.quantize(reference, group_size=64, bits=8, class_predicate=lambda path, m: path.endswith("mlp.router"))
    folder = copy_model_folder("gpt_oss", "v4", tmp_path / "converted")
    arrays = {k.replace(".switch_mlp.", ".experts."): v for k, v in tree_flatten(reference.parameters())}
    mx.save_safetensors(str(folder / "model.safetensors"), arrays)
    config = json.loads((folder / "config.json").read_text())
    del config["quantization_config"]
    routers = {f"model.layers.{i}.mlp.router": {"group_size": 64, "bits": 8} for i in range(3)}
    config["quantization"] = {"group_size": 32, "bits": 4, "mode": "mxfp4", **routers}
    (folder / "config.json").write_text(json.dumps(config))

    model = load_model(folder, dtype="keep", fuse=True).model
    mlp = model.layers[1].mlp
    assert isinstance(mlp.router, nn.QuantizedLinear) and mlp.router.bits == 8
    assert mlp.switch_mlp.gate_up_proj.mode == "mxfp4"
    tokens = expected["input_ids"]
    assert mx.abs(model(tokens) - reference(tokens)).max().item() < 1e-5


def test_yarn_truncate_false_is_what_the_fixture_needs(tmp_path, expected):
    """mlx-lm 0.32.2 rounds YaRN's correction range whatever `truncate` says; on the fixture that moves the
    logits by about 1.5 (MOE_NOTES.md §6), which reading `truncate: false` avoids."""
    folder = copy_model_folder("gpt_oss_dense", "v4", tmp_path / "rounded")
    config = json.loads((folder / "config.json").read_text())
    config["rope_scaling"]["truncate"] = True
    (folder / "config.json").write_text(json.dumps(config))
    logits = load_model(folder, dtype="float32").model(expected["input_ids"])
    assert mx.abs(logits[0] - expected["logits"]).max().item() > 1.0


BASE = dict(model_type="gpt_oss", hidden_size=64, num_hidden_layers=4, intermediate_size=32, num_attention_heads=4,
            vocab_size=10)


@pytest.mark.parametrize("config,top_k", [
    ({}, 4),
    ({"experts_per_token": 2}, 2),  # OpenAI's own name alone
    ({"experts_per_token": 2, "num_experts_per_tok": 3}, 3),  # transformers reads its own name
    ({"num_experts_per_tok": None, "experts_per_token": 2}, 2),
])
def test_experts_per_token_under_either_name(config, top_k):
    args = gpt_oss.ModelArgs.from_dict({**BASE, **config})
    assert args.num_experts_per_tok == top_k
    assert gpt_oss.Model(args).layers[0].mlp.routing.top_k == top_k


def test_defaults_are_gpt_oss_configs():
    args = gpt_oss.ModelArgs.from_dict(normalize_config(BASE))
    assert args.layer_types == ["sliding_attention", "full_attention"] * 2
    assert [args.window(i) for i in range(4)] == [128, None, 128, None]
    assert args.rope_parameters == gpt_oss.DEFAULT_ROPE
    assert (args.head_dim, args.num_key_value_heads, args.attention_bias) == (64, 8, True)
    assert (args.swiglu_limit, args.swiglu_alpha, args.num_local_experts) == (7.0, 1.702, 128)
    # A v4 config whose rope_scaling comes without rope_theta keeps GptOssConfig's theta, not 10000.
    scaling = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64}
    args = gpt_oss.ModelArgs.from_dict(normalize_config({**BASE, "rope_scaling": scaling}))
    assert args.rope_parameters == {**scaling, "rope_theta": 150000.0}
