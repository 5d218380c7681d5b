"""The gpt_oss parity fixtures as GGUF files the way Ollama's converter wrote them (ollama_gpt_oss_to_gguf), in each of
its layouts: MXFP4 type 4 with gate_up fused, ggml's MXFP4 with gate_up fused, then gate and up split. Files with
float matrices F32 against transformers' logits and greedy ids; Ollama's own F16 files against the folder's model
holding their F16 values, and their greedy ids against transformers'; decode with cache and chunked prefill against
the full pass; the file's keys giving the folder's ModelArgs; the translation giving llama.cpp's tensors, names,
shapes and MXFP4 bytes; MXFP4 codes and scales bit for bit; the tokenizer splitting as gpt-oss's (gpt-4o)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import mlx.core as mx
import numpy as np
import pytest

from mlxd.loading.gguf import load_gguf_model, load_gguf_tokenizer
from mlxd.loading.gguf.ollama import as_llama_cpp
from mlxd.loading.gguf.quants import OLLAMA_MXFP4, mxfp4, mxfp4_paired
from mlxd.loading.gguf.reader import GGUFTensor, read_gguf
from mlxd.loading.gguf.tokenizer import build_tokenizer
from mlxd.loading.loader import LoadedModel, load_model
from tests.gguf.gpt_oss_to_gguf import ggml_mxfp4
from tests.gguf.hf_to_gguf import GPT_OSS, PARITY, write_gguf
from tests.gguf.ollama_gpt_oss_to_gguf import LAYOUTS, write_ollama_gguf
from tests.gguf.test_gguf_gpt_oss import ARGS, FIXTURES, LOGIT_TOL, SELF_TOL, check_mxfp4_experts, check_split_experts
from tests.helpers.parity_checks import greedy_with_cache, max_decode_error, prefill_in_chunks


class OllamaGGUF(NamedTuple):
    path: Path
    loaded: LoadedModel
    stored: dict[str, mx.array]  # values F16 rounding left, under transformers' names
    expected: dict[str, mx.array]


@pytest.fixture(scope="module")
def ollama_gguf(tmp_path_factory):
    """Factory (fixture, layout, float_type="F16", dtype="float32", fuse=True) -> OllamaGGUF, each file written once
    and each load made once."""
    files: dict[tuple[str, str, str], tuple[Path, dict[str, mx.array]]] = {}
    loads: dict[tuple[str, ...], LoadedModel] = {}

    def get(fixture: str, layout: str, float_type: str = "F16", dtype: str = "float32", fuse: bool = True
            ) -> OllamaGGUF:
        key = (fixture, layout, float_type)
        if key not in files:
            path = tmp_path_factory.mktemp("ollama") / f"{fixture}-{layout}-{float_type}.gguf"
            files[key] = path, write_ollama_gguf(fixture, path, layout=layout, float_type=float_type)
        path, stored = files[key]
        if (*key, dtype, str(fuse)) not in loads:
            loads[(*key, dtype, str(fuse))] = load_gguf_model(path, dtype=dtype, fuse=fuse)
        expected = mx.load(str(PARITY / fixture / "expected.safetensors"))
        return OllamaGGUF(path, loads[(*key, dtype, str(fuse))], stored, expected)

    return get


@pytest.fixture(scope="module")
def llama_cpp_gguf(tmp_path_factory):
    """The fixture as llama.cpp's converter writes it (F32), read: what a translated Ollama file must become."""
    def get(fixture: str):
        path = tmp_path_factory.mktemp("llama_cpp") / f"{fixture}.gguf"
        if not path.exists():
            write_gguf(fixture, GPT_OSS, path)
        return read_gguf(path)

    return get


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fixture", FIXTURES)
def test_f32_logits_and_greedy_ids_match_transformers(ollama_gguf, fixture, layout):
    """Float matrices kept F32 (Ollama writes F16: next test), the MXFP4 experts dequantized to float32."""
    _, loaded, _, expected = ollama_gguf(fixture, layout, "F32")
    assert loaded.model_type == "gpt_oss"
    logits = loaded.model(expected["input_ids"])
    assert mx.abs(logits[0] - expected["logits"]).max().item() < LOGIT_TOL
    want = expected["greedy_ids"].tolist()
    assert greedy_with_cache(loaded.model, expected["input_ids"], len(want)) == want


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fixture", FIXTURES)
def test_f16_file_computes_with_its_stored_values(ollama_gguf, fixture, layout):
    """Ollama's own types (float matrices F16; expert biases too in the type-4 layout) against the folder's model
    holding what the file stores: F16 rounding moves transformers' logits by ~5e-3, not the greedy ids."""
    _, loaded, stored, expected = ollama_gguf(fixture, layout)
    reference = load_model(PARITY / fixture, dtype="float32").model
    reference.load_weights(list(reference.sanitize(dict(stored)).items()), strict=False)
    tokens = expected["input_ids"]
    assert mx.abs(loaded.model(tokens) - reference(tokens)).max().item() < LOGIT_TOL
    want = expected["greedy_ids"].tolist()
    assert greedy_with_cache(loaded.model, tokens, len(want)) == want


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fixture", FIXTURES)
def test_decode_with_cache_and_chunked_prefill_equal_the_full_pass(ollama_gguf, fixture, layout):
    """Chunks of 7 and the decode steps cross the sliding layers' window of 16."""
    _, loaded, _, expected = ollama_gguf(fixture, layout)
    tokens = expected["input_ids"]
    assert max_decode_error(loaded.model, tokens, expected["greedy_ids"]) < SELF_TOL
    assert mx.abs(prefill_in_chunks(loaded.model, tokens, 7)[0] - loaded.model(tokens)).max().item() < SELF_TOL


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fixture", FIXTURES)
def test_the_file_describes_the_folders_model(ollama_gguf, fixture, layout):
    """Without a rope scaling type, expert width or YaRN betas in the file: YaRN with llama.cpp's betas (the
    folder's), the width of the gate experts, even layers sliding, the range unrounded."""
    loaded = ollama_gguf(fixture, layout).loaded
    folder = load_model(PARITY / fixture, dtype="float32")
    for name in ARGS:
        assert getattr(loaded.args, name) == getattr(folder.args, name), name
    assert loaded.args.rms_norm_eps == pytest.approx(folder.args.rms_norm_eps)
    assert loaded.args.rope_parameters["rope_type"] == "yarn" and loaded.args.rope_parameters["truncate"] is False


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fixture", FIXTURES)
def test_translation_gives_llama_cpps_file(ollama_gguf, llama_cpp_gguf, fixture, layout):
    """Read as llama.cpp's layout, an Ollama file has the tensors llama.cpp's converter writes, names and shapes,
    and its gpt-oss keys; ggml MXFP4 experts (type 39) are those bytes, type 4 the same codes and scales."""
    raw = read_gguf(ollama_gguf(fixture, layout, "F32").path)
    assert raw.metadata["general.architecture"] == "gptoss"
    assert not any(k.endswith(("rope.scaling.type", "expert_feed_forward_length")) for k in raw.metadata)
    ours, theirs = as_llama_cpp(raw), llama_cpp_gguf(fixture)
    assert {t.name: t.shape for t in ours.tensors} == {t.name: t.shape for t in theirs.tensors}
    keys = {k: v for k, v in theirs.metadata.items() if k.startswith("gpt-oss.")}
    for key, value in keys.items():
        assert ours.metadata[key] == pytest.approx(value), key
    assert ours.metadata["tokenizer.ggml.pre"] == "gpt-4o"
    by_name = {t.name: t for t in theirs.tensors}
    for t in ours.tensors:
        if t.type_name == "MXFP4":
            assert np.array_equal(np.asarray(t.raw).reshape(-1), by_name[t.name].raw), t.name
        elif t.type_name == OLLAMA_MXFP4:
            codes, scales = mxfp4_paired(np.ascontiguousarray(t.raw).reshape(-1, 17))
            want_codes, want_scales = mxfp4(np.asarray(by_name[t.name].raw).reshape(-1, 17))
            assert np.array_equal(codes, want_codes) and np.array_equal(scales, want_scales), t.name
        else:
            assert t.type_name == "F32" and np.array_equal(np.asarray(t.raw).reshape(-1), by_name[t.name].raw)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mxfp4_experts_keep_the_checkpoints_codes(ollama_gguf, layout):
    """Held as stored, the file's MXFP4 experts (either type) are mxfp4 QuantizedSwitchLinear layers whose packed
    codes and scales equal those of the folder's MXFP4 blocks, bit for bit, and give transformers' logits through
    gather_qmm, gate and up fused as served or not."""
    _, loaded, _, expected = ollama_gguf("gpt_oss", layout, "F32", dtype="keep", fuse=False)
    check_mxfp4_experts(loaded, ollama_gguf("gpt_oss", layout, "F32", dtype="keep").loaded, expected)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dense_experts_are_the_folders_split_gate_and_up(ollama_gguf, layout):
    """Gate (rows 0::2) and up (rows 1::2) of the fused experts, weights and biases, are the arrays the folder's
    sanitize makes; the sinks, a bare tensor name in the file, arrive as they are."""
    loaded = ollama_gguf("gpt_oss_dense", layout, "F32", fuse=False).loaded.model
    folder = load_model(PARITY / "gpt_oss_dense", dtype="float32").model
    for layer in range(3):
        check_split_experts(loaded, folder, layer)
        assert mx.array_equal(loaded.model.layers[layer].self_attn.sinks, folder.model.layers[layer].self_attn.sinks)


def test_fused_qkv_splits_into_q_k_v(ollama_gguf):
    """Files converted from OpenAI's original checkpoint hold attn_qkv, q rows then k then v (weights and biases):
    read back as attn_q, attn_k, attn_v with the bytes of the separate tensors."""
    gguf = read_gguf(ollama_gguf("gpt_oss", "split", "F32").path)
    by_name = {t.name: t for t in gguf.tensors}
    fused, parts = [], {}
    for layer in range(3):
        for kind in ("weight", "bias"):
            names = [f"blk.{layer}.attn_{p}.{kind}" for p in "qkv"]
            parts.update({n: by_name[n] for n in names})
            raw = np.concatenate([by_name[n].raw for n in names])
            rows = sum(by_name[n].shape[0] for n in names)
            fused.append(GGUFTensor(f"blk.{layer}.attn_qkv.{kind}", "F32", (rows, *by_name[names[0]].shape[1:]), raw))
    others = [t for t in gguf.tensors if t.name not in parts]
    split = {t.name: t for t in as_llama_cpp(replace(gguf, tensors=others + fused)).tensors}
    for name, t in parts.items():
        assert split[name].shape == t.shape and np.array_equal(np.asarray(split[name].raw).reshape(-1), t.raw), name


def test_type_4_and_ggml_mxfp4_blocks_hold_the_same_values():
    """quants.mxfp4_paired (the checkpoint's byte order) and quants.mxfp4 (ggml's) give the same MLX codes and
    scales for one block written both ways, and so the same values."""
    rng = np.random.default_rng(0)
    blocks, scales = rng.integers(0, 256, (5, 1, 16), dtype=np.uint8), rng.integers(100, 140, (5, 1), dtype=np.uint8)
    paired = np.concatenate([scales[..., None], blocks], axis=-1).reshape(5, 17)
    codes, exponents = mxfp4_paired(paired)
    assert np.array_equal(codes, blocks.reshape(5, 16)) and np.array_equal(exponents, scales)
    ggml_codes, ggml_exponents = mxfp4(ggml_mxfp4(blocks, scales).raw.reshape(5, 17))
    assert np.array_equal(codes, ggml_codes) and np.array_equal(exponents, ggml_exponents)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_tokenizer_splits_as_gpt_oss(ollama_gguf, llama_cpp_gguf, fixture):
    """The file says "default"; Ollama's model code split as GPT-4o (o200k) whatever it said, and so does mlxd: the
    tokens of a llama.cpp file naming "gpt-4o". The converter writes gpt-oss's bos and eos ids (199998, 199999)
    whatever the vocabulary: out of this one's range they name no token, so no BOS is added and no end of generation
    comes from them (in gpt-oss's vocabulary they are <|startoftext|> and <|endoftext|>)."""
    tokenizer = load_gguf_tokenizer(ollama_gguf(fixture, "split").path)
    reference = build_tokenizer({**llama_cpp_gguf(fixture).metadata, "tokenizer.ggml.pre": "gpt-4o"})
    for text in ["Hello world!", "it's 2024, isn't it?\n\n  spaced   out", "<bos>x<eos> y", "çà 日本 ÉCOLE"]:
        assert tokenizer.encode(text, add_special_tokens=False) == reference.encode(text, add_special_tokens=False)
    assert tokenizer.encode("x", add_special_tokens=True) == tokenizer.encode("x", add_special_tokens=False)
    # Generation ends only on the fixture vocabulary's "<eos>", by its text as llama.cpp ends Gemma 4's.
    eos = [tokenizer.token_to_id("<eos>")]
    assert tokenizer.bos_token_id is None and ollama_gguf(fixture, "split").loaded.eos_token_ids == eos
