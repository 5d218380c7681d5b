"""Do mlxd and mlx-lm compute the same thing on a random_model folder? Writes each Qwen3.5 / Gemma 4 /
GLM-4.7-Flash shape's tiny variant in float32 (published layout) and in 4-bit (mlx-lm's conversion), loads each with
both engines, runs the same 16 token ids through both forwards and prints the largest logit difference.

    PYTHONPATH=daemon /work/scratch-tf/bin/python -m bench.models.check_anchor [--out /tmp/anchor] [--tol 2e-4]

Needs mlx-lm (the anchor's venv) and mlxd's daemon/ on the path; it is a script, not a test (CI has no mlx-lm).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import cast

from bench.models import shapes_hybrid
from bench.models.random_model import write_hybrid

TOKENS = [5, 17, 100, 42, 256, 7, 300, 99, 64, 3, 128, 250, 11, 77, 199, 310]


def logits_difference(folder: Path, dtype: str = "float32") -> tuple[float, float]:
    """max |mlxd - mlx-lm| over every position's logits, and max |logit| (for scale). dtype: mlxd's (a 4-bit
    folder loaded with "keep" stays quantized, as served on a GPU; with "float32" it is dequantized)."""
    import mlx.core as mx
    from mlx_lm.utils import load_model

    from mlxd.loading.model_source import load_model_and_tokenizer

    ids = mx.array([TOKENS])
    ours, _ = load_model_and_tokenizer(folder, dtype=dtype)
    assert ours.quantized == (dtype == "keep" and ours.quantization is not None)
    theirs, _ = load_model(folder)
    a = ours.model(ids).astype(mx.float32)
    b = theirs(ids).astype(mx.float32)
    return cast(float, mx.abs(a - b).max().item()), cast(float, mx.abs(b).max().item())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/anchor-check"))
    parser.add_argument("--tol", type=float, default=2e-4, help="float32 tolerance (HYBRID_NOTES: 2e-4)")
    args = parser.parse_args(argv)
    failed = False
    for shape in shapes_hybrid.HYBRID:
        for bits in (0, 4):
            folder = write_hybrid(shape, "float32", args.out / f"{shape}-{bits or 'f32'}", bits=bits, tiny=True)
            for dtype in ("float32", "keep") if bits else ("float32",):
                diff, scale = logits_difference(folder, dtype)
                # 4-bit: both read the same codes; only the order of summation differs.
                ok = diff <= args.tol * (10 if bits else 1)
                failed |= not ok
                kind = f"4-bit, mlxd {'quantized' if dtype == 'keep' else 'dequantized'}" if bits else "float32"
                print(f"{shape:16s} {kind:27s} max|Δlogit| {diff:.2e} (max|logit| {scale:.2f})  "
                      f"{'ok' if ok else 'DIFFERENT'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
