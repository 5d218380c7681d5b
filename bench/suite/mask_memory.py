"""What a step pays for reading masks the host wrote (issue 17): synchronous steps of a matmul and the masked select
of R x V logits, the masks each step written by the host or not, in interleaved rounds.

    python -m bench mask_memory [--rows 16 --vocab 128256 --hidden 2048 --steps 300 --rounds 3]

Kinds: `none` (the matmul and an argmax, no mask), `resident` (one mask made once and never written again: the
select's own cost), `written` (models/mask_buffers.py's arrays written each step, their memory left where MLX's
CUDA allocator puts host-made arrays: managed memory, moved by page faults to the host at the write and to the
device at the read), `advised` (the same arrays advised to stay on the host, mapped for the device:
models/managed_memory.py, what the daemon does on CUDA, mask_buffers.ADVISE), `copied`
(`mx.array` of the mask each step). Each step is evaluated before the next begins, so a step's time holds the
host's write and the device's read both. On an H100 (session 50, the probe this bench was made from; ms a step,
each of 3 rounds' median): none 0.31-0.33, resident 0.32-0.39, written 0.75-0.90, copied 0.76-0.90, advised
0.41-0.46. Off CUDA `advised` is `written`.
"""

from __future__ import annotations

import statistics
import time

import mlx.core as mx
import numpy as np

from bench import common
from mlxd.models import mask_buffers, ops
from mlxd.models.mask_buffers import MaskBuffers

KINDS = ("none", "resident", "written", "advised", "copied")


def step_times(kind: str, masks: list[np.ndarray], x: mx.array, w: mx.array, buffers: MaskBuffers | None,
               steps: int) -> list[float]:
    """Seconds of each of `steps` synchronous steps of one kind."""
    rows, width = x.shape[0], w.shape[1]
    resident = ops.upload_masks(masks[0], None, (rows, width))
    mx.eval(resident.array)
    times = []
    for s in range(steps):
        start = time.perf_counter()
        logits = x @ w
        if kind == "none":
            out = mx.argmax(logits, axis=-1)
        else:
            uploaded = resident if kind == "resident" else ops.upload_masks(
                masks[s % len(masks)], None, (rows, width), buffers if kind != "copied" else None)
            out = mx.argmax(ops.apply_masks(logits, uploaded), axis=-1)
        mx.eval(out)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    words = -(-args.vocab // 32)
    masks = [rng.integers(-2**31, 2**31 - 1, size=(args.rows, words), dtype=np.int32) for _ in range(4)]
    x = mx.random.normal((args.rows, args.hidden)).astype(mx.bfloat16)
    w = (mx.random.normal((args.hidden, args.vocab)) * 0.01).astype(mx.bfloat16)
    mx.eval(x, w)
    buffers: dict[str, MaskBuffers] = {}
    for kind, advise in (("written", False), ("advised", True)):  # each kind's arrays kept for the whole run
        saved, mask_buffers.ADVISE = mask_buffers.ADVISE, advise
        try:
            buffers[kind] = MaskBuffers()
        finally:
            mask_buffers.ADVISE = saved
    medians: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(args.rounds):
        for kind in KINDS:
            times = step_times(kind, masks, x, w, buffers.get(kind), args.steps)[args.steps // 6:]  # warm-up dropped
            medians[kind].append(statistics.median(times) * 1e3)
    print(f"{args.rows} rows x {args.vocab} logits, {mx.default_device()}, advised: {buffers['advised'].advised}")
    resident = statistics.median(medians["resident"])
    rows = [[kind, *(f"{m:.3f}" for m in values), f"{statistics.median(values) / resident:.2f}"]
            for kind, values in medians.items()]
    print(common.table(["kind", *(f"round {r + 1} ms" for r in range(args.rounds)), "/ resident"], rows))


if __name__ == "__main__":
    main()
