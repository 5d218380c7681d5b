"""Gemma 3 VLM reproduces transformers' float32 logits and greedy ids, one-shot, with a KV cache and through
the engine's chunked prefill; image tokens must attend to each other both ways for that."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mlxd.engine.request import FinalEvent, GenerationRequest, PromptImage, TokenEvent
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import SchedulerOptions
from mlxd.engine.vision import ImageEncoder, chunk_end
from mlxd.engine.warmup import run_to_completion
from mlxd.generation.params import SamplingParams
from mlxd.images.decode import ImageLimits, decode_image
from mlxd.images.preprocess import content_digest, load_processor_config, preprocess
from mlxd.loading.loader import load_model
from mlxd.models.gemma3 import language
from tests.vlm.gemma3_fixture import GEMMA3, IMAGE, IMAGE_PNG, model_folder

LOGIT_TOL = 1e-3
LAYOUTS = ["v5", "v4"]


def fixture_image() -> PromptImage:
    pixels = preprocess(decode_image(IMAGE_PNG.read_bytes(), 0, ImageLimits()), load_processor_config(GEMMA3, 32))
    return PromptImage(position=8, length=4, pixels=pixels, digest=content_digest(IMAGE_PNG.read_bytes()))


def image_embeddings(model) -> mx.array:
    return model.encode_images(mx.array(fixture_image().pixels[None]))[0]


def test_fixture_places_one_image_at_position_8(expected):
    ids = expected["input_ids"][0].tolist()
    assert ids[7:13] == [317, IMAGE, IMAGE, IMAGE, IMAGE, 318] and ids.count(IMAGE) == 4


@pytest.mark.parametrize("layout", LAYOUTS)
def test_full_forward_matches_transformers(vlm, expected, layout):
    model = vlm(layout).model
    logits = model(expected["input_ids"], images=[(8, image_embeddings(model))])
    assert logits.shape == (1, 40, 320)
    assert mx.abs(logits[0] - expected["logits"]).max().item() < LOGIT_TOL


def test_causal_only_attention_fails_parity(vlm, expected, monkeypatch):
    model = vlm().model
    monkeypatch.setattr(language, "image_block_mask", lambda length, cache, base, images: base)
    logits = model(expected["input_ids"], images=[(8, image_embeddings(model))])
    error = mx.abs(logits[0] - expected["logits"])
    # Positions before the image are unaffected; every position from the image on fails the parity bar.
    assert error[:8].max().item() < LOGIT_TOL
    assert error[8:].max(axis=-1).min().item() > 10 * LOGIT_TOL
    assert error.max().item() > 1.0


def test_input_embeddings_with_images_equal_token_ids(vlm, expected):
    """input_embeddings stand for the text model's scaled embeddings; the images still go in unscaled."""
    model = vlm().model
    images = [(8, image_embeddings(model))]
    embeddings = model.language_model.embed(expected["input_ids"])
    got = model(expected["input_ids"], input_embeddings=embeddings, images=images)
    assert mx.array_equal(got, model(expected["input_ids"], images=images))


def test_fused_text_projections_give_the_same_logits(vlm, expected, tmp_path):
    """As served: the text decoder's q/k/v and gate/up share a matmul each; the vision tower's stay apart."""
    model = load_model(model_folder("v5", tmp_path / "gemma3"), dtype="float32", fuse=True).model
    text = model.language_model
    assert text.fused == frozenset(text.fusable_projections()) and "qkv_proj" in model.layers[0].self_attn
    assert all(path.startswith("language_model.") for path in model.fusable_projections())
    assert "q_proj" in model.vision_tower.vision_model.encoder.layers[0].self_attn
    images = [(8, image_embeddings(model))]
    logits = model(expected["input_ids"], images=images)
    assert mx.abs(logits - vlm().model(expected["input_ids"], images=images)).max().item() < 1e-5
    assert mx.abs(logits[0] - expected["logits"]).max().item() < LOGIT_TOL


def test_without_image_embeddings_parity_fails(vlm, expected):
    logits = vlm().model(expected["input_ids"])
    assert mx.abs(logits[0] - expected["logits"]).max().item() > 100 * LOGIT_TOL


@pytest.mark.parametrize("layout", LAYOUTS)
def test_greedy_decode_with_cache_matches_transformers(vlm, expected, layout):
    model = vlm(layout).model
    want = expected["greedy_ids"].tolist()
    cache = model.make_cache()
    token = model(expected["input_ids"], cache, images=[(8, image_embeddings(model))])[:, -1].argmax(axis=-1)
    got = [token.item()]
    while len(got) < len(want):
        token = model(token[:, None], cache)[:, -1].argmax(axis=-1)
        got.append(token.item())
    assert got == want


def runtime(loaded, cache_bytes: int = 1 << 20) -> ModelRuntime:
    return ModelRuntime(loaded.model, lambda ids: "", frozenset(), frozenset(), loaded.context_length,
                        loaded.vocab_size, ImageEncoder(loaded.model, cache_bytes))


# Chunk sizes that end before, inside (moved back), at the start of (grown) and after the image span.
@pytest.mark.parametrize("chunk", [1, 3, 5, 8, 10, 12, 40])
def test_engine_chunked_prefill_matches_transformers(vlm, expected, chunk):
    loaded = vlm()
    request = GenerationRequest("r", expected["input_ids"][0].tolist(), SamplingParams(temperature=0.0),
                                max_tokens=16, ignore_eos=True, prompt_logprobs=True, images=(fixture_image(),))
    events = run_to_completion(runtime(loaded), request, SchedulerOptions(prefill_chunk_size=chunk))
    final = events[-1]
    assert isinstance(final, FinalEvent), events
    assert [t for e in events if isinstance(e, TokenEvent) for t in e.token_ids] == expected["greedy_ids"].tolist()
    # Prompt logprobs are the log-softmax of the logits at every position but the last.
    logits = expected["logits"]
    want = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
    ids = expected["input_ids"][0].tolist()
    got = np.array([lp.logprob for lp in final.prompt_logprobs])
    assert len(got) == 39
    assert np.abs(got - want[np.arange(39), ids[1:]]).max() < LOGIT_TOL


def test_two_images_chunked_equals_one_shot(vlm, expected):
    """A second image later in the prompt: each image's tokens attend only within their own image."""
    loaded = vlm()
    model = loaded.model
    ids = expected["input_ids"][0].tolist()
    ids = ids[:20] + [317, IMAGE, IMAGE, IMAGE, IMAGE, 318] + ids[20:]
    first = fixture_image()
    second = PromptImage(21, 4, np.ascontiguousarray(first.pixels[:, ::-1]), "flipped")
    embeddings = [model.encode_images(mx.array(im.pixels[None]))[0] for im in (first, second)]
    one_shot = model(mx.array([ids]), images=[(8, embeddings[0]), (21, embeddings[1])])
    for chunk in (4, 7, 16):
        cache = model.make_cache()
        start, pieces = 0, []
        while start < len(ids):
            end = chunk_end(start, chunk, len(ids), (first, second))
            chunk_images = [(im.position - start, e) for im, e in zip((first, second), embeddings)
                            if start <= im.position < end]
            pieces.append(model(mx.array([ids[start:end]]), cache, images=chunk_images))
            start = end
        assert mx.abs(mx.concatenate(pieces, axis=1) - one_shot).max().item() < 1e-4, chunk


def test_encoder_cache_hits_and_evicts(vlm):
    loaded = vlm()
    image = fixture_image()
    one = image_embeddings(loaded.model).nbytes
    encoder = ImageEncoder(loaded.model, max_cache_bytes=2 * one)
    first = encoder.encode(image)
    assert mx.array_equal(encoder.encode(image), first) and (encoder.hits, encoder.misses) == (1, 1)
    for i in range(3):
        encoder.encode(PromptImage(8, 4, image.pixels, f"other-{i}"))
    assert encoder.cached_bytes == 2 * one
    encoder.encode(image)  # evicted by the newer ones: encoded again
    assert encoder.misses == 5
    assert ImageEncoder(loaded.model, max_cache_bytes=one - 1).encode(image).shape == (4, 64)


def test_transformers5_weight_names_load_to_the_same_logits(vlm, expected, tmp_path):
    """transformers 5 saves `model.language_model.*`, `model.vision_tower.*` and an `lm_head` copy."""
    folder = model_folder("v5", tmp_path / "gemma3")
    weights = load_file(str(folder / "model.safetensors"))
    renamed = {("model." + k.replace("language_model.model.", "language_model.", 1)): v for k, v in weights.items()}
    renamed["lm_head.weight"] = weights["language_model.model.embed_tokens.weight"]
    save_file(renamed, str(folder / "model.safetensors"))
    model = load_model(folder, dtype="float32").model
    logits = model(expected["input_ids"], images=[(8, image_embeddings(model))])
    assert mx.abs(logits[0] - expected["logits"]).max().item() < LOGIT_TOL
