"""Config normalization and the other pure functions over config dicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlxd.errors import ModelLoadError
from mlxd.loading.config import (
    bos_token_id,
    config_dtype,
    context_length,
    eos_token_ids,
    layer_quantization,
    normalize_config,
    quantization,
)
from mlxd.models import architecture

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"


def _read(arch: str, name: str) -> dict:
    return json.loads((PARITY / arch / name).read_text())


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gpt_oss", "gpt_oss_dense"])
def test_both_layouts_give_equal_model_args(arch):
    module = architecture(_read(arch, "config.json")["model_type"]).module
    v5 = module.ModelArgs.from_dict(normalize_config(_read(arch, "config.json")))
    v4 = module.ModelArgs.from_dict(normalize_config(_read(arch, "config_v4.json")))
    assert v5 == v4


def test_gemma3_text_config_inside_the_vision_model_normalizes_like_the_text_model():
    nested = normalize_config(_read("gemma3", "config.json")["text_config"])
    assert nested["rope_parameters"] == normalize_config(_read("gemma3_text", "config_v4.json"))["rope_parameters"]


GEMMA = {"model_type": "gemma3_text", "num_hidden_layers": 6}
ROPE_CASES = [
    ("v4 default", {"rope_theta": 500000}, {"rope_type": "default", "rope_theta": 500000.0}),
    ("v4 nothing", {}, None),
    (
        "v4 scaling without theta: the architecture's default theta stands",
        {"rope_scaling": {"rope_type": "yarn", "factor": 32.0, "truncate": False}},
        {"rope_type": "yarn", "factor": 32.0, "truncate": False},
    ),
    (
        "v4 old 'type' key",
        {"rope_theta": 10000.0, "rope_scaling": {"type": "linear", "factor": 2.0}},
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    ),
    (
        "v5 'type' key",
        {"rope_parameters": {"type": "linear", "factor": 2.0, "rope_theta": 10000}},
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    ),
    (
        "v4 gemma3 with linear scaling on full layers",
        {**GEMMA, "rope_theta": 1e6, "rope_local_base_freq": 10000.0,
         "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
        {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
         "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}},
    ),
    (
        "v4 gemma3 without local theta",
        {**GEMMA, "rope_theta": 1e6},
        {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
         "full_attention": {"rope_type": "default", "rope_theta": 1e6}},
    ),
    (
        "flat v5 entry on gemma3 describes the full layers",
        {**GEMMA, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, "rope_local_base_freq": 5.0},
        {"sliding_attention": {"rope_type": "default", "rope_theta": 5.0},
         "full_attention": {"rope_type": "default", "rope_theta": 1e6}},
    ),
]


@pytest.mark.parametrize("name,config,expected", ROPE_CASES, ids=[c[0] for c in ROPE_CASES])
def test_rope_parameters(name, config, expected):
    assert normalize_config(config).get("rope_parameters") == expected


@pytest.mark.parametrize(
    "config,expected",
    [
        ({"num_hidden_layers": 4, "sliding_window_pattern": 2},
         ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]),
        ({"num_hidden_layers": 2, "sliding_window_pattern": 2, "layer_types": ["full_attention"] * 2},
         ["full_attention"] * 2),
        ({"num_hidden_layers": 2}, None),
    ],
)
def test_layer_types(config, expected):
    assert normalize_config(config).get("layer_types") == expected


def test_normalized_config_drops_the_v4_keys():
    normalized = normalize_config(_read("gemma3_text", "config_v4.json"))
    for key in ("rope_theta", "rope_scaling", "rope_local_base_freq", "sliding_window_pattern", "torch_dtype"):
        assert key not in normalized
    assert normalized["dtype"] == "float32"


@pytest.mark.parametrize(
    "config,expected",
    [
        ({"dtype": "bfloat16"}, "bfloat16"),
        ({"torch_dtype": "float16"}, "float16"),
        ({"dtype": None, "torch_dtype": "torch.bfloat16"}, "bfloat16"),
        ({"text_config": {"dtype": "bfloat16"}}, "bfloat16"),
        ({}, None),
    ],
)
def test_config_dtype(config, expected):
    assert config_dtype(config) == expected


@pytest.mark.parametrize(
    "config,expected",
    [
        ({"max_position_embeddings": 8192}, 8192),
        ({"n_positions": 1024}, 1024),
        ({"text_config": {"max_position_embeddings": 131072}}, 131072),
        ({"max_position_embeddings": None, "seq_length": 4096}, 4096),
        ({}, None),
    ],
)
def test_context_length(config, expected):
    assert context_length(config) == expected


@pytest.mark.parametrize(
    "config,generation,eos,bos",
    [
        ({"eos_token_id": 2, "bos_token_id": 1}, None, [2], 1),
        ({"eos_token_id": 128001}, {"eos_token_id": [128001, 128008, 128009], "bos_token_id": 128000},
         [128001, 128008, 128009], 128000),
        ({"eos_token_id": [1, 106]}, {"eos_token_id": 106}, [1, 106], None),
        ({"text_config": {"eos_token_id": 1, "bos_token_id": 2}}, {}, [1], 2),
        ({}, None, [], None),
    ],
)
def test_special_token_ids(config, generation, eos, bos):
    assert eos_token_ids(config, generation) == eos
    assert bos_token_id(config, generation) == bos


def test_quantization_block():
    assert quantization({}) is None
    assert quantization({"quantization": {"group_size": 64, "bits": 4}}) == {"group_size": 64, "bits": 4}
    assert quantization({"quantization_config": {"group_size": 32, "bits": 8}}) == {"group_size": 32, "bits": 8}
    with pytest.raises(ModelLoadError, match="'gptq'"):
        quantization({"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128}})


QUANT = {
    "group_size": 64,
    "bits": 4,
    "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8},
    "lm_head": False,
}


@pytest.mark.parametrize(
    "path,expected",
    [
        ("model.layers.1.mlp.down_proj", {"group_size": 64, "bits": 4}),
        ("model.layers.0.mlp.down_proj", {"group_size": 32, "bits": 8}),
        ("lm_head", None),
    ],
)
def test_layer_quantization(path, expected):
    assert layer_quantization(QUANT, path) == expected


def test_layer_quantization_passes_the_mode():
    assert layer_quantization({"group_size": 32, "bits": 4, "mode": "mxfp4"}, "x") == {
        "group_size": 32, "bits": 4, "mode": "mxfp4"}
