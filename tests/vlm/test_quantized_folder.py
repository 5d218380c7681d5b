"""An MLX-quantized folder of the VLM (4-bit text weights, vision tower as stored) loads and runs."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten
from test_gemma3_parity import image_embeddings

from mlxd.loading.loader import load_model
from tests.vlm.gemma3_fixture import GEMMA3

# Tolerance against transformers' float32 logits (spread about +-2.7): random tiny weights quantize badly.
NEAR_FLOAT = {4: 2.0, 8: 0.1}


@pytest.fixture(scope="module", params=[4, 8])
def quantized_folder(request, tmp_path_factory):
    """Written the way MLX conversions ship Gemma 3: MLX weight layout, text layers quantized, vision kept."""
    bits = request.param
    folder = tmp_path_factory.mktemp("vlm-q") / f"gemma3-{bits}bit"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copyfile(GEMMA3 / name, folder / name)
    model = load_model(GEMMA3, dtype="float32").model
    nn.quantize(model, group_size=32, bits=bits, class_predicate=lambda path, m: path.startswith("language_model.")
                and hasattr(m, "to_quantized"))
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    config = json.loads((GEMMA3 / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "quantization": {"group_size": 32, "bits": bits}}))
    return folder


def test_quantized_text_weights_stay_quantized_and_vision_does_not(quantized_folder):
    loaded = load_model(quantized_folder, dtype="keep")
    assert loaded.quantized and loaded.quantization["group_size"] == 32
    model = loaded.model
    assert isinstance(model.language_model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert isinstance(model.language_model.model.embed_tokens, nn.QuantizedEmbedding)
    assert type(model.vision_tower.vision_model.encoder.layers[0].self_attn.q_proj) is nn.Linear


def test_quantized_and_dequantized_loads_agree_and_stay_near_float(quantized_folder, expected):
    kept = load_model(quantized_folder, dtype="keep").model
    dequantized = load_model(quantized_folder, dtype="float32").model
    ids = expected["input_ids"]
    logits_kept = kept(ids, images=[(8, image_embeddings(kept))])
    logits_deq = dequantized(ids, images=[(8, image_embeddings(dequantized))])
    assert mx.abs(logits_kept - logits_deq).max().item() < 1e-3
    bits = json.loads((quantized_folder / "config.json").read_text())["quantization"]["bits"]
    assert mx.abs(logits_kept[0] - expected["logits"]).max().item() < NEAR_FLOAT[bits]


def test_fused_quantized_text_projections_give_the_same_logits(quantized_folder, expected):
    """As served: the quantized text decoder's q/k/v and gate/up share a matmul each, at the checkpoint's bits."""
    split = load_model(quantized_folder, dtype="keep").model
    fused = load_model(quantized_folder, dtype="keep", fuse=True).model
    qkv = fused.language_model.layers[0].self_attn.qkv_proj
    bits = json.loads((quantized_folder / "config.json").read_text())["quantization"]["bits"]
    assert isinstance(qkv, nn.QuantizedLinear) and qkv.bits == bits
    ids, images = expected["input_ids"], [(8, image_embeddings(split))]
    assert mx.abs(fused(ids, images=images) - split(ids, images=images)).max().item() < 1e-5
