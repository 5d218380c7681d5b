"""Where one sequence's decode step goes: mlxd's model against mlx-lm's on the same folder, in one process.

    python -m bench decode_profile --model PATH [--context 2048 --steps 64 --rounds 3]

For each engine (both models are loaded side by side; the weights are read twice), after a prefill of
`--context` tokens:
- `step (sync)`: one decode step, evaluated before the next is built (host graph building + device time);
- `step (pipelined)`: steps queued one ahead with async_eval, as both engines' generate loops run them;
- `step without MLP`: the same, with every layer's MLP / MoE block replaced by the identity (what attention,
  norms, embedding and output layer cost);
- `MLPs, chained`: every layer's MLP / MoE block on one token, chained in one graph (what the experts cost);
- `output layer`: the final norm and the LM head on one token;
- `graph building (host)`: of `step (sync)`, the time spent building the graph in Python (no evaluation).
First it prints the kernel nodes of one decode step per engine (graph primitives, views left out) where they differ.
mlxd's model is driven as its runner drives a single sequence (its own cache from make_cache). Greedy ids are
not compared: random weights and two implementations only agree to rounding (see docs/performance.md). Prints
medians of rounds in milliseconds, and the ratio mlx-lm / mlxd (above 1: mlxd faster) last.
"""

from __future__ import annotations

import collections
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common

MLXD, MLX_LM = "mlxd", "mlx-lm"


def _load(engine: str, model: Path, dtype: str) -> tuple[Any, Callable[[], list], Any]:
    """(model, make a fresh cache, the module holding `layers`)."""
    if engine == MLXD:
        from mlxd.loading.model_source import load_model_and_tokenizer
        loaded, _ = load_model_and_tokenizer(model, dtype)
        m = loaded.model
        return m, m.make_cache, _with_layers(m)
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.utils import load_model
    m, _ = load_model(model)
    return m, lambda: make_prompt_cache(m), _with_layers(m)


def _with_layers(model: Any) -> Any:
    """The module that holds the decoder layers beside the final norm (`model.model` in both engines' text models,
    `model.language_model.model` in mlx-lm's vision-language ones)."""
    language_model = getattr(model, "language_model", None)
    for holder in (getattr(model, "model", None), model, language_model, getattr(language_model, "model", None)):
        if holder is not None and isinstance(getattr(holder, "layers", None), list) and hasattr(holder, "norm"):
            return holder
    raise SystemExit(f"no decoder layers beside a norm in {type(model).__name__}")


class _Identity:
    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return x


def _timed(fn: Callable[[], None], reps: int) -> float:
    """Median milliseconds of fn() over reps calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def profile(engine: str, model: Any, make_cache: Callable[[], list], holder: Any, context: int, steps: int,
            vocab: int) -> dict[str, float]:
    import mlx.core as mx

    prompt = mx.array([common.prompt_ids(vocab, context)])

    def prefilled() -> list:
        cache = make_cache()
        for start in range(0, context, 512):
            model(prompt[:, start:start + 512], cache=cache)
            mx.eval([c.state for c in cache])
        return cache

    token = mx.array([[7]])
    out: dict[str, float] = {}

    def sync_steps() -> tuple[float, float]:
        """Milliseconds per step, and of them the graph's building."""
        cache = prefilled()
        start, building = time.perf_counter(), 0.0
        for _ in range(steps):
            built = time.perf_counter()
            y = mx.argmax(model(token, cache=cache)[:, -1], axis=-1)
            building += time.perf_counter() - built
            mx.eval(y)
        return (time.perf_counter() - start) * 1e3 / steps, building * 1e3 / steps

    def pipelined_steps() -> float:
        cache = prefilled()
        y = mx.argmax(model(token, cache=cache)[:, -1], axis=-1)
        mx.async_eval(y)
        start = time.perf_counter()
        for _ in range(steps):
            nxt = mx.argmax(model(y[:, None], cache=cache)[:, -1], axis=-1)
            mx.async_eval(nxt)
            y.item()
            y = nxt
        y.item()
        return (time.perf_counter() - start) * 1e3 / steps

    out["step (sync)"], building = sync_steps()
    out["step (pipelined)"] = pipelined_steps()
    mlps = [layer.mlp for layer in holder.layers]
    for layer in holder.layers:
        layer.mlp = _Identity()
    try:
        out["step without MLP (sync)"], _ = sync_steps()
    finally:
        for layer, mlp in zip(holder.layers, mlps):
            layer.mlp = mlp
    hidden = holder.norm.weight.shape[-1]
    x = (mx.random.normal((1, 1, hidden)) * 0.1).astype(holder.norm.weight.dtype)
    mx.eval(x)

    def chained() -> None:
        y = x
        for mlp in mlps:
            y = mlp(y) * 0.5 + x * 0.5
        mx.eval(y)

    out["MLPs, chained"] = _timed(chained, steps)
    head = getattr(model, "lm_head", None) or holder.embed_tokens.as_linear
    out["output layer"] = _timed(lambda: mx.eval(head(holder.norm(x))), steps)
    out["graph building (host)"] = building
    print(engine, {k: round(v, 3) for k, v in out.items()}, flush=True)
    return out


VIEWS = {"Broadcast", "Reshape", "Squeeze", "Slice", "Transpose", "AsStrided", "ExpandDims", "Split", "Flatten",
         "Unflatten", "StopGradient", "Depends"}


def kernel_nodes(model: Any, make_cache: Callable[[], list], vocab: int) -> collections.Counter:
    """The primitives of one decode step's graph after a short prefill, views left out: on a GPU each one is
    about one kernel launch, and a decode step is bound by launches (a compiled function counts once)."""
    import mlx.core as mx

    cache = make_cache()
    mx.eval(model(mx.array([common.prompt_ids(vocab, 16)]), cache=cache))
    return kernel_nodes_of(model(mx.array([[7]]), cache=cache))


def kernel_nodes_of(output: Any) -> collections.Counter:
    """The primitives of the (unevaluated) graph behind output, views left out."""
    import mlx.core as mx

    with tempfile.TemporaryDirectory() as folder:
        dot = Path(folder, "step.dot")
        mx.export_to_dot(str(dot), output)
        labels = re.findall(r'label ="([^"]+)"', dot.read_text())
    return collections.Counter(label for label in labels if label not in VIEWS)


def print_kernel_nodes(counts: dict[str, collections.Counter], what: str = "one decode step") -> None:
    ours, theirs = counts[MLXD], counts[MLX_LM]
    print(f"kernel nodes in {what}: {MLXD} {sum(ours.values())}, {MLX_LM} {sum(theirs.values())}")
    for name in sorted(set(ours) | set(theirs), key=lambda n: theirs[n] - ours[n]):
        if ours[name] != theirs[name]:
            print(f"  {name}: {ours[name]} / {theirs[name]}")


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    import mlx.core as mx

    engines = {name: _load(name, args.model, args.dtype) for name in (MLXD, MLX_LM)}
    vocab = 320  # the random-weight folders' tokenizer; ids only need to be valid
    print_kernel_nodes({name: kernel_nodes(model, make_cache, vocab)
                        for name, (model, make_cache, _) in engines.items()})
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, (model, make_cache, holder) in engines.items():
            rounds[name].append(profile(name, model, make_cache, holder, args.context, args.steps, vocab))
            mx.clear_cache()
    print_medians(rounds, f"{args.model.name}, context {args.context}, {args.steps} steps, medians of "
                          f"{args.rounds} rounds (ms)")


def print_medians(rounds: dict[str, list[dict[str, float]]], title: str) -> None:
    """Each measurement's median over the rounds per engine (mlxd first, mlx-lm last, any other mlxd variant
    between), and mlx-lm's over mlxd's (above 1: mlxd faster)."""
    engines = [MLXD, *(name for name in rounds if name not in (MLXD, MLX_LM)), MLX_LM]
    lines = []
    for key in rounds[MLXD][0]:
        medians = {name: statistics.median(r[key] for r in rounds[name] if key in r) for name in engines}
        lines.append([key, *(f"{medians[name]:.3f}" for name in engines),
                      f"{medians[MLX_LM] / medians[MLXD]:.2f}"])
    print(f"\n{title}")
    print(common.table(["what", *engines, "mlx-lm / mlxd"], lines))


if __name__ == "__main__":
    main()
