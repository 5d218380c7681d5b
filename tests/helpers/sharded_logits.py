"""One rank of a tensor-parallel parity run (tests/helpers/ranks.py starts it): for each fixture folder named on
the command line, load this rank's share, and rank 0 saves the logits at every position of the fixture's prompt
and 16 greedy tokens decoded with the cache into `<out>/<name>.safetensors`. Also the 1-rank reference, in-process,
when no ring is configured (MLX_HOSTFILE unset)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

import mlx.core as mx

from mlxd.loading.loader import load_model
from tests.helpers import sharded_batch

GREEDY_TOKENS = 16
IMAGE_POSITION = 8  # where the Gemma 3 fixture's prompt holds its image (tests/vlm/test_gemma3_parity.py)


def logits_and_greedy(model: Any, input_ids: mx.array, pixels: mx.array | None = None,
                      steps: int = GREEDY_TOKENS) -> dict[str, mx.array]:
    """The full pass's logits [L, vocab] (no cache), and `steps` greedy tokens: a cached prefill of the prompt,
    then one decode step per token. `pixels`: the prompt's image, for a vision-language model."""
    extra = {} if pixels is None else {"images": [(IMAGE_POSITION, model.encode_images(pixels)[0])]}
    full = model(input_ids[None], **extra)[0]
    cache = model.make_cache()
    logits = model(input_ids[None], cache, **extra)[0, -1]
    tokens = []
    for _ in range(steps):
        token = mx.argmax(logits)
        tokens.append(token)
        logits = model(token.reshape(1, 1), cache)[0, -1]
    return {"logits": full, "greedy_ids": mx.stack(tokens)}


def run(out: Path, folders: list[Path], group: mx.distributed.Group | None) -> None:
    """Each folder loaded in float32, or with its weights as stored when its name ends in "-keep" (quantized);
    then the engine's batched script (sharded_batch.py) on it, its tokens saved beside the logits."""
    rank = 0 if group is None else group.rank()
    sock = None if group is None else sharded_batch.side_channel(out, rank)
    for folder in folders:
        loaded = load_model(folder, dtype="keep" if folder.name.endswith("-keep") else "float32", group=group)
        expected = mx.load(str(folder / "expected.safetensors"))
        assert isinstance(expected, dict)
        ids = expected["input_ids"].reshape(-1)
        result = logits_and_greedy(loaded.model, ids, expected.get("pixel_values"))
        mx.eval(result)
        prompt = cast(list[int], ids.tolist())
        if sock is None:
            result |= sharded_batch.to_arrays(sharded_batch.single(loaded, prompt))
        elif rank == 0:
            result |= sharded_batch.to_arrays(sharded_batch.lead(loaded, prompt, sock))
        else:
            sharded_batch.follow(loaded, sock)
        if rank == 0:
            mx.save_safetensors(str(out / f"{folder.name}.safetensors"), result)


if __name__ == "__main__":
    run(Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]], mx.distributed.init(backend="ring", strict=True))
