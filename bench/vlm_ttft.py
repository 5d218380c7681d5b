"""Time to first token of a vision-language request, split into preprocessing, vision encoding and prefill.

    python bench/vlm_ttft.py                      # real Gemma 3 vision shapes (SigLIP 896 px), small text model
    python bench/vlm_ttft.py --model PATH         # a Gemma 3 folder (Hugging Face or MLX-quantized)

Preprocessing (Pillow decode + resize + normalize of a 1024x768 JPEG) runs where the daemon runs it, off the
MLX thread; vision encoding is the SigLIP tower + projector; prefill runs the prompt with the image's 256
tokens and samples the first token. Prints one JSON line per run, then the medians.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map
from PIL import Image

from mlxd.engine.images import ImageEncoder
from mlxd.engine.request import FinalEvent, GenerationRequest, PromptImage
from mlxd.engine.scheduler import ModelRuntime, run_to_completion
from mlxd.generation.params import SamplingParams
from mlxd.images.decode import ImageLimits, decode_image
from mlxd.images.preprocess import ProcessorConfig, content_digest, preprocess
from mlxd.launcher import blas_note
from mlxd.loading.loader import load_model
from mlxd.models.gemma3 import Model, ModelArgs

# Gemma 3 4B's vision tower and image layout; a 1B-sized decoder with a small vocabulary keeps CPU runs short.
RANDOM_CONFIG = {
    "model_type": "gemma3", "mm_tokens_per_image": 256, "boi_token_index": 300, "eoi_token_index": 301,
    "image_token_index": 302,
    "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                      "num_attention_heads": 16, "image_size": 896, "patch_size": 14},
    "text_config": {"model_type": "gemma3_text", "vocab_size": 4096, "hidden_size": 1152, "intermediate_size": 6912,
                    "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                    "sliding_window": 512, "max_position_embeddings": 32768},
}


def random_model(vision_layers: int, text_layers: int) -> nn.Module:
    config = {**RANDOM_CONFIG, "vision_config": {**RANDOM_CONFIG["vision_config"], "num_hidden_layers": vision_layers},
              "text_config": {**RANDOM_CONFIG["text_config"], "num_hidden_layers": text_layers}}
    model = Model(ModelArgs.from_dict(config))
    mx.random.seed(0)
    # Small random values everywhere (zero-initialized norms and projection included) keep activations finite.
    model.update(tree_map(lambda p: mx.random.normal(p.shape) * 0.02, model.parameters()))
    mx.eval(model.parameters())
    return model


def jpeg(width: int = 1024, height: int = 768) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, help="a Gemma 3 folder; default: random weights, real vision shapes")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--text-tokens", type=int, default=32, help="text tokens around the image")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--vision-layers", type=int, default=27, help="random model: SigLIP layers (Gemma 3: 27)")
    parser.add_argument("--text-layers", type=int, default=26, help="random model: decoder layers (Gemma 3 1B: 26)")
    args = parser.parse_args()
    mx.set_default_stream(mx.new_stream(mx.default_device()))
    model = load_model(args.model, dtype=args.dtype).model if args.model else \
        random_model(args.vision_layers, args.text_layers)
    tokens = model.image_tokens
    config = ProcessorConfig(height=tokens.image_size, width=tokens.image_size)
    vocab = model.args.vocab_size
    half = args.text_tokens // 2
    text = [(i * 7919 + 13) % (min(vocab, 250) - 10) + 5 for i in range(args.text_tokens)]
    ids = [2] + text[:half] + tokens.span() + text[half:]
    runtime = ModelRuntime(model, lambda ids: "", frozenset(), frozenset(), 32768, vocab, ImageEncoder(model, 1 << 30))
    data = jpeg()
    print(json.dumps({"device": str(mx.default_device()), "blas": blas_note(), "prompt_tokens": len(ids),
                      "image_tokens": tokens.per_image, "image_bytes": len(data)}), flush=True)
    rows = []
    for run in range(args.runs + 1):  # the first run compiles kernels and is not counted
        started = time.perf_counter()
        pixels = preprocess(decode_image(data, 0, ImageLimits()), config)
        preprocessed = time.perf_counter()
        image = PromptImage(1 + half + 1, tokens.per_image, pixels, f"{content_digest(data)}-{run}")
        runtime.image_encoder.encode(image)
        encoded = time.perf_counter()
        # The embeddings are cached now: this run's prefill pays only for the language model.
        request = GenerationRequest(f"r{run}", ids, SamplingParams(temperature=0.0), max_tokens=1, ignore_eos=True,
                                    images=(image,))
        final = run_to_completion(runtime, request, prefill_chunk_size=512)[-1]
        assert isinstance(final, FinalEvent), final
        done = time.perf_counter()
        row = {"preprocess_s": preprocessed - started, "vision_s": encoded - preprocessed,
               "prefill_s": done - encoded, "ttft_s": done - started}
        if run:
            rows.append(row)
            print(json.dumps({"run": run, **{k: round(v, 4) for k, v in row.items()}}), flush=True)
    print(json.dumps({"median": {k: round(statistics.median(r[k] for r in rows), 4) for k in rows[0]}}))


if __name__ == "__main__":
    main()
