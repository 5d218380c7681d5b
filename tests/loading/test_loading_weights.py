"""Weight-file discovery, reading, and load_model's errors and results."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from mlxd.errors import ModelLoadError
from mlxd.loading.loader import load_model
from mlxd.loading.weights import find_weight_files, float32_bytes, follow_layer_overrides, read_weights, weights_dtype


def _shard(folder, n_shards: int, with_index: bool) -> list[str]:
    """Split model.safetensors of `folder` into HF-named shards (optionally with an index) and remove it."""
    weights = mx.load(str(folder / "model.safetensors"))
    names = sorted(weights)
    files = [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
    weight_map = {}
    for i, fname in enumerate(files):
        part = {k: weights[k] for k in names[i::n_shards]}
        mx.save_safetensors(str(folder / fname), part)
        weight_map.update({k: fname for k in part})
    (folder / "model.safetensors").unlink()
    if with_index:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return files


def test_single_file(model_folder):
    folder = model_folder("llama")
    assert find_weight_files(folder) == [folder / "model.safetensors"]


@pytest.mark.parametrize("with_index", [True, False])
def test_sharded(model_folder, with_index):
    folder = model_folder("llama")
    files = _shard(folder, 3, with_index)
    assert find_weight_files(folder) == [folder / f for f in files]


def test_index_naming_a_missing_shard(model_folder):
    folder = model_folder("llama")
    files = _shard(folder, 2, with_index=True)
    (folder / files[1]).unlink()
    with pytest.raises(ModelLoadError, match=files[1]):
        find_weight_files(folder)


def test_no_weights(model_folder):
    folder = model_folder("llama")
    (folder / "model.safetensors").unlink()
    # expected.safetensors is in the folder too: it must not be mistaken for weights.
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        find_weight_files(folder)


def test_unreadable_weights(model_folder):
    folder = model_folder("llama")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        read_weights([folder / "model.safetensors"])


def test_sharded_model_loads_to_the_same_logits(model_folder):
    single = load_model(model_folder("qwen2"))
    folder = model_folder("qwen2", "v4")
    _shard(folder, 2, with_index=True)
    sharded = load_model(folder)
    assert sorted(p.name for p in sharded.files) == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    tokens = mx.array([[1, 5, 9, 200]])
    assert mx.array_equal(single.model(tokens), sharded.model(tokens))


def test_loaded_model_fields(model_folder):
    folder = model_folder("gemma3_text")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 106], "bos_token_id": 1}))
    loaded = load_model(folder)
    assert loaded.model_type == "gemma3_text" and loaded.args.num_hidden_layers == 6
    assert loaded.context_length == 2048 and loaded.vocab_size == 320
    assert loaded.dtype == loaded.checkpoint_dtype == "float32"
    assert loaded.quantization is None and not loaded.quantized
    assert loaded.eos_token_ids == [2, 106] and loaded.bos_token_id == 1
    assert [p.name for p in loaded.files] == ["config.json", "generation_config.json", "model.safetensors"]
    assert loaded.weight_bytes == sum(w.nbytes for w in mx.load(str(folder / "model.safetensors")).values())
    assert loaded.config["model_type"] == "gemma3_text" and "rope_parameters" in loaded.config
    assert "float32" in loaded.load_note


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _edit_weights(folder, edit):
    weights = dict(mx.load(str(folder / "model.safetensors")))
    edit(weights)
    mx.save_safetensors(str(folder / "model.safetensors"), weights)


ERROR_CASES = [
    ("missing folder", lambda f: f.rename(f.with_name("gone")), "does not exist"),
    ("missing config", lambda f: (f / "config.json").unlink(), "config.json"),
    ("bad json", lambda f: (f / "config.json").write_text("{"), "unreadable"),
    ("no model_type", lambda f: _edit_config(f, model_type=None), "no model_type"),
    ("unknown model_type", lambda f: _edit_config(f, model_type="deepseek_v3"), "'deepseek_v3'"),
    ("bad generation config", lambda f: (f / "generation_config.json").write_text("[1]"), "generation_config"),
    ("missing weight", lambda f: _edit_weights(f, lambda w: w.pop("model.norm.weight")), "lack model.norm.weight"),
    ("extra weight", lambda f: _edit_weights(f, lambda w: w.update({"model.extra": mx.zeros(2)})), "model.extra"),
    (
        "wrong shape",
        lambda f: _edit_weights(f, lambda w: w.update({"model.norm.weight": mx.zeros(3)})),
        "do not fit",
    ),
    ("bad dtype request", None, "'float8'"),
]


@pytest.mark.parametrize("name,break_it,message", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_load_errors_name_the_problem(model_folder, name, break_it, message):
    folder = model_folder("llama")
    if break_it is not None:
        break_it(folder)
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(folder, dtype="float8" if break_it is None else "auto")
    assert "\n" not in str(info.value)


def test_weights_dtype_and_float32_size():
    weights = {"a": mx.zeros((4, 4), mx.bfloat16), "b": mx.zeros((2,), mx.float32), "c": mx.zeros((3,), mx.uint32)}
    assert weights_dtype(weights) == "bfloat16"
    assert weights_dtype({"c": weights["c"]}) is None
    assert float32_bytes(weights, None) == (16 + 2 + 3) * 4


def test_context_length_falls_back_when_the_config_names_none(model_folder):
    folder = model_folder("llama")
    _edit_config(folder, max_position_embeddings=None)
    assert load_model(folder).context_length == 4096


def test_layer_overrides_follow_renamed_and_split_layers():
    """An override follows its layer's arrays to their new name, and passes to the parts of a layer sanitize split
    (SPLIT_LAYERS); a part without scales (kept float) gets none, and other layers keep theirs."""
    gate, fused = mx.zeros((4, 2)), mx.zeros((6, 2))
    before = {"language_model.model.mlp.gate.scales": gate, "model.attn.qkvz.scales": fused,
              "model.other.scales": mx.zeros((2, 2))}
    after = {"model.mlp.gate.scales": gate, "model.attn.qkv.scales": fused[:4], "model.other.scales": mx.zeros((2, 2))}
    eight, four = {"group_size": 32, "bits": 8}, {"group_size": 64, "bits": 4}
    quant = {"group_size": 32, "bits": 6, "language_model.model.mlp.gate": eight, "model.attn.qkvz": four}
    out = follow_layer_overrides(quant, before, after, {"qkvz": ("qkv", "z")})
    assert out["model.mlp.gate"] == eight and out["model.attn.qkv"] == four and "model.attn.z" not in out
    assert follow_layer_overrides(quant, before, after).get("model.attn.qkv") is None
