"""Where a batched decode step goes: mlxd's runner against mlx-lm's BatchGenerator step, N rows, in one process.

    python -m bench batch_step_profile --model PATH [--rows 16 --context 256 --steps 48 --rounds 3]

batch_throughput says whether mlxd's N streams keep up with mlx-lm's; this says where a step's time goes when they
do not. Both engines hold the same N rows (prompts of context + 3*i tokens, so rows differ in length and both
need their padding masks, as in serving), then time steps pipelined as each engine runs them: mlxd's
`Runner.step` (forward, sampling, the previous step's tokens read) and mlx-lm's `GenerationBatch._step` (the
same, plus its log-softmax of every row). Each variant replaces one part of every decoder layer by the identity:
- `step`: the whole step;
- `without MLP`: the MLP / MoE blocks removed (what attention, norms, embedding and output layer cost);
- `without attention`: the full-attention blocks (`self_attn`) removed;
- `without linear attention`: the recurrent mixers (`linear_attn`, `mixer`) removed, for hybrid models.
A part the model does not have is skipped. `--also-kernels mlx` times mlxd a second time with that ops backend
(models/ops.py; e.g. MLX's ops where the loader chose the CUDA kernels), to measure what the kernels buy;
`--variant NAME:module.attribute=value;...` times mlxd again with those settings (`common.patched`), its rounds
interleaved with the others' (two processes of the same code differ by more than most changes make).
First it prints the kernel nodes of one step per engine where they
differ (decode_profile's count, on the batched step). Medians of rounds in milliseconds per step, and the ratio
mlx-lm / mlxd (above 1: mlxd faster) last. The differences between variants say what each part costs inside the
step (parts overlap on the device, so they need not add up).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import common
from bench.suite.decode_profile import (
    MLX_LM,
    MLXD,
    _Identity,
    _with_layers,
    kernel_nodes_of,
    print_kernel_nodes,
    print_medians,
)

VARIANTS = {"step": (), "without MLP": ("mlp",), "without attention": ("self_attn",),
            "without linear attention": ("linear_attn", "mixer")}
VOCAB = 320  # the random-weight folders' tokenizer; ids only need to be valid


@contextmanager
def without(holder: Any, parts: tuple[str, ...]) -> Iterator[bool]:
    """Every layer's `parts` replaced by the identity while inside; yields whether any layer had one."""
    saved = [(layer, name, getattr(layer, name)) for layer in holder.layers for name in parts
             if getattr(layer, name, None) is not None]
    for layer, name, _ in saved:
        setattr(layer, name, _Identity())
    try:
        yield bool(saved) or not parts
    finally:
        for layer, name, part in saved:
            setattr(layer, name, part)


def add_variant_args(p: Any) -> None:
    """--variant (mlxd again with settings) and --variants (the parts left out), as both profiles take them."""
    p.add_argument("--variant", action="append", default=[], metavar="NAME:SETTINGS",
                   help="time mlxd again with these settings (module.attribute=value;...); repeatable")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))


def both_models(folder: Path, dtype: str) -> tuple[Any, Any]:
    """mlxd's model of `folder` (its loader: projections fused, kernels chosen) and mlx-lm's."""
    from mlx_lm.utils import load_model

    from mlxd.loading.model_source import load_model_and_tokenizer
    return load_model_and_tokenizer(folder, dtype)[0].model, load_model(folder)[0]


def prompts(rows: int, context: int) -> list[list[int]]:
    return [common.prompt_ids(VOCAB, context + 3 * i, salt=i) for i in range(rows)]


class MlxdBatch:
    """N rows prefilled one by one and joined, as the scheduler does; `step` is one Runner.step."""

    def __init__(self, model: Any, rows: list[list[int]]) -> None:
        from mlxd.engine.runner import Runner
        from mlxd.generation.params import SamplingParams
        self.runner = Runner(model, VOCAB)
        for i, ids in enumerate(rows):
            self.runner.open(i, SamplingParams(temperature=0.0), ids, None)
            for start in range(0, len(ids) - 1, 512):
                self.runner.prefill(i, ids[start:min(start + 512, len(ids) - 1)])
            self.runner.join(i, ids[-1])
        self.runner.step()

    def step(self) -> None:
        self.runner.step()

    def finish(self) -> None:
        self.runner.flush()

    def kernel_nodes(self) -> collections.Counter:
        counted: list[collections.Counter] = []

        def forward(inputs: Any) -> Any:  # counted before the step's sampling evaluates it
            logits = type(self.runner)._forward_step(self.runner, inputs)
            counted.append(kernel_nodes_of(logits))
            return logits
        self.runner._forward_step = forward  # type: ignore[method-assign]
        try:
            self.runner.step()
        finally:
            del self.runner._forward_step
        return counted[0]


class MlxLmBatch:
    """mlx-lm's BatchGenerator run until every row decodes; `step` is one GenerationBatch._step."""

    def __init__(self, model: Any, rows: list[list[int]]) -> None:
        from mlx_lm.generate import BatchGenerator
        self.gen = BatchGenerator(model, max_tokens=1 << 20, completion_batch_size=len(rows),
                                  prefill_batch_size=len(rows))
        self.gen.insert(rows, [1 << 20] * len(rows))
        while len(self.gen._generation_batch) < len(rows):
            self.gen.next_generated()
        self.batch = self.gen._generation_batch

    def step(self) -> None:
        self.batch._step()

    def finish(self) -> None:
        self.gen.close()

    def kernel_nodes(self) -> collections.Counter:
        return kernel_nodes_of(self.batch.model(self.batch._next_tokens[:, None], cache=self.batch.prompt_cache))


def timed_steps(batch: MlxdBatch | MlxLmBatch, steps: int) -> float:
    for _ in range(3):
        batch.step()
    start = time.perf_counter()
    for _ in range(steps):
        batch.step()
    elapsed = (time.perf_counter() - start) * 1e3 / steps
    batch.finish()
    return elapsed


def profile(make: Callable[[], MlxdBatch | MlxLmBatch], holder: Any, steps: int,
            variants: dict[str, tuple[str, ...]]) -> dict[str, float]:
    import mlx.core as mx
    out: dict[str, float] = {}
    for name, parts in variants.items():
        batch = make()  # prefilled by the whole model: only the timed steps go without the part
        with without(holder, parts) as present:
            if present:
                out[name] = timed_steps(batch, steps)
            else:
                batch.finish()
        mx.clear_cache()
    return out


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--also-kernels", default=None, help="time mlxd again with this ops backend (e.g. mlx)")
    add_variant_args(p)
    args = p.parse_args(argv)
    variants = {name: VARIANTS[name] for name in args.variants.split(",")}
    from mlxd.models import ops

    ours, theirs = both_models(args.model, args.dtype)
    rows = prompts(args.rows, args.context)
    # name -> (make a batch, the layers' holder, ops backend or None, settings for common.patched)
    makers: dict[str, tuple[Callable[[], MlxdBatch | MlxLmBatch], Any, str | None, str]] = {
        MLXD: (lambda: MlxdBatch(ours, rows), _with_layers(ours), None, "")}
    if args.also_kernels:
        makers[f"{MLXD} ({args.also_kernels})"] = (lambda: MlxdBatch(ours, rows), _with_layers(ours),
                                                   args.also_kernels, "")
    for spec in args.variant:
        label, settings = common.variant(spec)
        makers[f"{MLXD} ({label})"] = (lambda: MlxdBatch(ours, rows), _with_layers(ours), None, settings)
    makers[MLX_LM] = (lambda: MlxLmBatch(theirs, rows), _with_layers(theirs), None, "")
    counts = {}
    for name, (make, _, backend, settings) in makers.items():
        with ops.using(backend or ops.backend()), common.patched(settings):
            batch = make()
            counts[name] = batch.kernel_nodes()
            batch.finish()
        if name != MLXD and name != MLX_LM:
            print(f"kernel nodes in one step, {name}: {sum(counts.pop(name).values())}")
    print_kernel_nodes(counts, f"one {args.rows}-row decode step")
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in makers}
    for _ in range(args.rounds):
        for name, (make, holder, backend, settings) in makers.items():
            with ops.using(backend or ops.backend()), common.patched(settings):
                rounds[name].append(profile(make, holder, args.steps, variants))
            print(name, {k: round(v, 3) for k, v in rounds[name][-1].items()}, flush=True)
    print_medians(rounds, f"{args.model.name}, {args.rows} rows of {args.context}+ tokens, {args.steps} steps, "
                          f"medians of {args.rounds} rounds (ms per step)")


if __name__ == "__main__":
    main()
