"""What one verify step costs against a plain step: a batch of greedy rows through the Runner, each step run to its
tokens (synchronous), at given rows, context lengths and widths (1 + drafts per row; width 1 is a plain step and the
read of its token). With `--variant`, the same steps with some module attributes set (`common.patched`), trial by
trial in the same process: the way to compare two versions of the verify path (a kernel against MLX's ops).

    python -m bench verify_step [--model smollm2|PATH] [--rows 1,16] [--context 300,2000] [--widths 1,2,5]
                                [--trials 25] [--variant NAME:module.attribute=value;...]

The drafts are a repeated token, mostly rejected: the cost of a step does not depend on what it accepts, and the
caches roll back as they do in serving. The first 5 trials of each case are not counted (kernels compile for new
shapes on a GPU). Prints the median ms of each case, and each variant's ratio to the code as it stands.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import mlx.core as mx

from bench import common
from mlxd.engine.runner import Runner
from mlxd.generation.params import SamplingParams
from mlxd.loading.model_source import load_model_and_tokenizer

WARM_TRIALS = 5


def batch(loaded: Any, rows: int, context: int) -> Runner:
    """A Runner whose `rows` greedy rows have prefilled `context` tokens each and joined the batch."""
    runner = Runner(loaded.model, loaded.vocab_size)
    prompt = common.prompt_ids(loaded.vocab_size, context)
    for row in range(rows):
        runner.open(row, SamplingParams(temperature=0.0), prompt, None)
        runner.prefill(row, prompt[:-1])
        runner.join(row, prompt[-1])
    runner.step()
    runner.flush()
    return runner


def timed_step(runner: Runner, rows: int, width: int, token: int) -> float:
    """Seconds of one synchronous step: a verify step of `width - 1` drafts per row, or (width 1) a plain step and
    the read of its tokens."""
    started = time.perf_counter()
    if width > 1:
        runner.step({row: [token] * (width - 1) for row in range(rows)})
    else:
        runner.step()
        runner.flush()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--rows", default="1,16")
    p.add_argument("--context", default="300,2000")
    p.add_argument("--widths", default="1,2,5")
    p.add_argument("--trials", type=int, default=25)
    p.add_argument("--variant", action="append", default=[], metavar="NAME:SETTINGS",
                   help="also the steps with SETTINGS (module.attribute=value;...: common.patched); repeatable")
    args = p.parse_args(argv)
    common.reexec_with_blas(__name__, argv)
    mx.set_default_stream(mx.new_stream(mx.default_device()))
    loaded, _ = load_model_and_tokenizer(common.resolve_model(args.model), args.dtype)
    modes = [("default", "")] + [common.variant(v) for v in args.variant]
    widths = [int(w) for w in args.widths.split(",")]
    lines = []
    for rows in (int(r) for r in args.rows.split(",")):
        for context in (int(c) for c in args.context.split(",")):
            runner = batch(loaded, rows, context)
            times: dict[tuple[int, str], list[float]] = {(w, name): [] for w in widths for name, _ in modes}
            for trial in range(args.trials + WARM_TRIALS):
                for width in widths:
                    for name, settings in modes:
                        with common.patched(settings):
                            seconds = timed_step(runner, rows, width, 11 + trial % 5)
                        if trial >= WARM_TRIALS:
                            times[(width, name)].append(seconds)
            for width in widths:
                base = statistics.median(times[(width, "default")]) * 1e3
                line: list[Any] = [rows, context, width, base]
                for name, _ in modes[1:]:
                    other = statistics.median(times[(width, name)]) * 1e3
                    line += [other, other / base]
                lines.append(line)
    header = ["rows", "context", "width", "ms"] + [h for name, _ in modes[1:] for h in (f"{name} ms", "ratio")]
    print(f"\n{args.model}: one synchronous step through the Runner, medians of {args.trials} trials")
    print(common.table(header, lines))


if __name__ == "__main__":
    main()
