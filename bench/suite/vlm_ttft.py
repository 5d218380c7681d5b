"""Time to first token of a vision-language request, split into preprocessing, vision encoding and prefill.

    python -m bench vlm_ttft                  # real Gemma 3 vision shapes (SigLIP 896 px), random weights
    python -m bench vlm_ttft --model PATH     # a Gemma 3 folder (Hugging Face or MLX-quantized)

Preprocessing (Pillow decode + resize + normalize of a 1024x768 JPEG) runs where the daemon runs it, off the
MLX thread; vision encoding is the SigLIP tower + projector; prefill runs the prompt with the image's 256
tokens and samples the first token. The anchor is the split itself: which part of the wait is worth shortening.
OpenBLAS is preloaded as `mlxd serve` preloads it (the benchmark re-executes itself once). Prints one JSON
line per run, then the medians.
"""

from __future__ import annotations

import io
import json
import statistics
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map
from PIL import Image

from bench import common
from mlxd.engine.request import FinalEvent, GenerationRequest, PromptImage
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.engine.vision import ImageEncoder
from mlxd.generation.params import SamplingParams
from mlxd.images.decode import ImageLimits, decode_image
from mlxd.images.preprocess import ProcessorConfig, content_digest, preprocess
from mlxd.launcher import blas_note
from mlxd.loading.model_source import load_model_and_tokenizer
from mlxd.models.gemma3 import Model, ModelArgs

# Gemma 3 4B's vision tower and image layout; a 1B-sized decoder with a small vocabulary keeps CPU runs short.
RANDOM_CONFIG: dict[str, Any] = {
    "model_type": "gemma3", "mm_tokens_per_image": 256, "boi_token_index": 300, "eoi_token_index": 301,
    "image_token_index": 302,
    "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                      "num_attention_heads": 16, "image_size": 896, "patch_size": 14},
    "text_config": {"model_type": "gemma3_text", "vocab_size": 4096, "hidden_size": 1152, "intermediate_size": 6912,
                    "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                    "sliding_window": 512, "max_position_embeddings": 32768},
}


def random_runtime(vision_layers: int, text_layers: int) -> ModelRuntime:
    """A runtime built by hand: random weights have no loader, so no LoadedModel for ModelRuntime.from_loaded."""
    config = {**RANDOM_CONFIG, "vision_config": {**RANDOM_CONFIG["vision_config"], "num_hidden_layers": vision_layers},
              "text_config": {**RANDOM_CONFIG["text_config"], "num_hidden_layers": text_layers}}
    model = Model(ModelArgs.from_dict(config))
    mx.random.seed(0)
    # Small random values everywhere (zero-initialized norms and projection included) keep activations finite.
    model.update(tree_map(lambda p: mx.random.normal(p.shape) * 0.02, model.parameters()))
    mx.eval(model.parameters())
    vocab = model.args.vocab_size
    return ModelRuntime(model, lambda ids: "", frozenset(), frozenset(), 32768, vocab, ImageEncoder(model, 1 << 30))


def jpeg(width: int = 1024, height: int = 768) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--model", type=Path, help="a Gemma 3 folder; default: random weights, real vision shapes")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--text-tokens", type=int, default=32, help="text tokens around the image")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--vision-layers", type=int, default=27, help="random model: SigLIP layers (Gemma 3: 27)")
    parser.add_argument("--text-layers", type=int, default=26, help="random model: decoder layers (Gemma 3 1B: 26)")
    args = parser.parse_args(argv)
    common.reexec_with_blas(__name__, argv)
    mx.set_default_stream(mx.new_stream(mx.default_device()))
    runtime = ModelRuntime.from_loaded(*load_model_and_tokenizer(args.model, args.dtype)) if args.model else \
        random_runtime(args.vision_layers, args.text_layers)
    assert runtime.image_encoder is not None, f"{args.model} is not a vision-language model"
    tokens = runtime.image_encoder.model.image_tokens
    config = ProcessorConfig(height=tokens.image_size, width=tokens.image_size)
    vocab = runtime.vocab_size
    half = args.text_tokens // 2
    text = [(i * 7919 + 13) % (min(vocab, 250) - 10) + 5 for i in range(args.text_tokens)]
    ids = [2] + text[:half] + tokens.span() + text[half:]
    data = jpeg()
    print(json.dumps({"device": str(mx.default_device()), "blas": blas_note(), "prompt_tokens": len(ids),
                      "image_tokens": tokens.per_image, "image_bytes": len(data)}), flush=True)
    # One scheduler for every run, as the daemon keeps one: its KV budget is measured once, in the warm-up run.
    scheduler = Scheduler(runtime, SchedulerOptions(prefill_chunk_size=512))
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
        scheduler.add(request)
        events = []
        while scheduler.has_work():
            events += [event for _, event in scheduler.step()]
        assert isinstance(events[-1], FinalEvent), events[-1]
        done = time.perf_counter()
        row = {"preprocess_s": preprocessed - started, "vision_s": encoded - preprocessed,
               "prefill_s": done - encoded, "ttft_s": done - started}
        if run:
            rows.append(row)
            print(json.dumps({"run": run, **{k: round(v, 4) for k, v in row.items()}}), flush=True)
    print(f"\nmedians of {args.runs} runs, seconds")
    print(common.table(list(rows[0]), [[statistics.median(r[k] for r in rows) for k in rows[0]]]))
