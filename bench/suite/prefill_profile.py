"""Where a long prompt's prefill goes: mlxd's runner against mlx-lm's model, one row, in one process.

    python -m bench prefill_profile --model PATH [--tokens 2048 --chunk 2048 --rounds 3]

batch_throughput's prefill case (2,048-token prompts over gRPC) says whether mlxd's time to first token keeps up
with mlx-lm's; this says where the difference lies: in the model's forward (each engine's own layers, kernels and
cache) or around it (the scheduler, the prefix cache, gRPC). Each engine prefills the same prompt into a fresh cache
in chunks of `--chunk` tokens (mlxd: `Runner.prefill`, as the scheduler calls it; mlx-lm: the model called on each
chunk with its prompt cache, as its generate's prefill steps do), evaluating the cache after each chunk (and the
final norm's output, which a variant without attention leaves as the layers' only result; not the logits). The
variants replace one part of every decoder layer by the identity, as batch_step_profile's do (`without MLP`, `without
attention`, `without linear attention`): what each part costs inside the prefill. `--variant NAME:SETTINGS` times
mlxd again with those settings (common.patched), interleaved. Medians of rounds in ms, mlx-lm / mlxd last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common
from bench.suite.batch_step_profile import VARIANTS, VOCAB, add_variant_args, both_models, without
from bench.suite.decode_profile import MLX_LM, MLXD, _with_layers, kernel_nodes_of, print_kernel_nodes, print_medians


class NormOutputs:
    """The final norm of a layers' holder, keeping what it returns: evaluated after each chunk beside the cache, so
    a variant whose layers write no cache (`without attention`) still computes them."""

    def __init__(self, holder: Any) -> None:
        self.norm = holder.norm
        self.outputs: list[Any] = []
        holder.norm = self

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        out = self.norm(x, *args, **kwargs)
        self.outputs.append(out)
        return out

    def evaluate(self) -> None:
        import mlx.core as mx
        mx.eval(self.outputs)
        self.outputs.clear()


def norm_outputs(model: Any) -> NormOutputs:
    """The model's NormOutputs, put in place at the first call: one per model, however many prefills share it (a
    second one would wrap the first, whose outputs nothing would then read or let go)."""
    holder = _with_layers(model)
    return holder.norm if isinstance(holder.norm, NormOutputs) else NormOutputs(holder)


def mlxd_prefill(model: Any, ids: list[int], chunk: int) -> Callable[[], None]:
    """One prefill of `ids` by mlxd's runner into a fresh row, chunk by chunk."""
    from mlxd.engine.runner import Runner
    from mlxd.generation.params import SamplingParams
    runner, norm = Runner(model, VOCAB), norm_outputs(model)

    def run() -> None:
        runner.open(0, SamplingParams(temperature=0.0), ids, None)
        for start in range(0, len(ids), chunk):
            runner.prefill(0, ids[start:start + chunk])
            norm.evaluate()
        runner.close(0)
    return run


def mlx_lm_prefill(model: Any, ids: list[int], chunk: int) -> Callable[[], None]:
    """One prefill of `ids` by mlx-lm's model into a fresh prompt cache, chunk by chunk."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache
    norm = norm_outputs(model)

    def run() -> None:
        cache = make_prompt_cache(model)
        for start in range(0, len(ids), chunk):
            model(mx.array(ids[start:start + chunk])[None], cache=cache)
            mx.eval([c.state for c in cache])
            norm.evaluate()
    return run


def chunk_nodes(model: Any, cache: list[Any], ids: list[int]) -> Any:
    """The kernel nodes of one chunk's forward into `cache` (its layers' outputs and the cache; not the logits)."""
    import mlx.core as mx
    norm = norm_outputs(model)
    model(mx.array(ids)[None], cache=cache)
    states = [a for c in cache for a in (c.state if isinstance(c.state, (list, tuple)) else [c.state])
              if isinstance(a, mx.array)]
    nodes = kernel_nodes_of(norm.outputs + states)
    norm.outputs.clear()  # counted, not computed
    return nodes


def timed(run: Callable[[], None], repeats: int) -> float:
    """Milliseconds of one prefill, the best of `repeats` after one left out (new shapes plan their kernels)."""
    import mlx.core as mx
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, (time.perf_counter() - start) * 1e3)
        mx.clear_cache()
    return best


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=2048, help="prompt tokens a prefill step takes, both engines")
    p.add_argument("--repeats", type=int, default=3, help="prefills a measurement, the best kept")
    p.add_argument("--rounds", type=int, default=3)
    add_variant_args(p)
    args = p.parse_args(argv)
    variants = {name: VARIANTS[name] for name in args.variants.split(",")}
    ours, theirs = both_models(args.model, args.dtype)
    ids = common.prompt_ids(VOCAB, args.tokens)
    from mlx_lm.models.cache import make_prompt_cache
    print_kernel_nodes({MLXD: chunk_nodes(ours, ours.make_cache(), ids[:args.chunk]),
                        MLX_LM: chunk_nodes(theirs, make_prompt_cache(theirs), ids[:args.chunk])},
                       f"the forward of a {min(args.chunk, args.tokens)}-token chunk")
    # name -> (one prefill, the layers' holder, settings for common.patched)
    makers: dict[str, tuple[Callable[[], None], Any, str]] = {
        MLXD: (mlxd_prefill(ours, ids, args.chunk), _with_layers(ours), "")}
    for spec in args.variant:
        label, settings = common.variant(spec)
        makers[f"{MLXD} ({label})"] = (mlxd_prefill(ours, ids, args.chunk), _with_layers(ours), settings)
    makers[MLX_LM] = (mlx_lm_prefill(theirs, ids, args.chunk), _with_layers(theirs), "")
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in makers}
    for _ in range(args.rounds):
        for name, (run, holder, settings) in makers.items():
            measured: dict[str, float] = {}
            with common.patched(settings):
                for variant, parts in variants.items():
                    with without(holder, parts) as present:
                        if present:
                            measured[variant] = timed(run, args.repeats)
            rounds[name].append(measured)
            print(name, {k: round(v, 2) for k, v in measured.items()}, flush=True)
    print_medians(rounds, f"{args.model.name}: one prefill of {args.tokens} tokens in chunks of {args.chunk}, "
                          f"best of {args.repeats}, medians of {args.rounds} rounds (ms)")


if __name__ == "__main__":
    main()
