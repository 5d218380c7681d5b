"""CPU prefill and decode tok/s: mlxd over gRPC against mlx-lm's generate_step on exactly the arrays mlxd serves
(bench/models/mlx_export.py) and llama.cpp (llama-cpp-python) on the same GGUF, alternating the three.

    bash scripts/bench_env.sh     # once: .bench-venv with mlx-lm and llama-cpp-python
    nice -n 5 .bench-venv/bin/python -m bench cpu_anchors --threads 1 [--models smollm2 llama-0.4b]

Models: "smollm2" (SmolLM2-135M-Instruct Q4_1, fetched once), "llama-0.4b" / "llama-1b" (random-weight Llama
GGUFs written once), or a GGUF path. mlx-lm gets OpenBLAS preloaded as `mlxd serve` preloads it. Each engine
lives in its own process, loaded once and warmed up; every round runs each prompt length on every engine, the
order rotating, with a new prompt each time so no prefix cache helps. Prefill tok/s = prompt tokens / time to
the first token the caller sees (for mlxd: the gRPC client); decode tok/s = tokens after the first / their time.
The table printed last has medians of the rounds and of the per-round ratios.
On a shared machine prefer --threads 1: with 2 threads on 2 cores, OpenBLAS's and llama.cpp's thread barriers
slow down ~10x whenever another process holds a core (measured: a float32 gemv at 0.4 GB/s instead of 5.5).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
from pathlib import Path

from gguf import GGUFReader

from bench import common
from bench.anchors import generate
from bench.daemon import Daemon
from mlxd_client import Client

ENGINES = ("mlxd", "mlx-lm", "llama.cpp")
RATIOS = (("mlxd", "mlx-lm"), ("mlxd", "llama.cpp"))


def bench_model(name: str, args: argparse.Namespace) -> list[common.Row]:
    gguf = common.resolve_model(name)
    out = args.out / Path(name).stem
    vocab = len(GGUFReader(gguf).fields["tokenizer.ggml.tokens"].data)
    with contextlib.ExitStack() as stack:
        runs = {}
        if "mlxd" in args.engines:
            daemon = stack.enter_context(Daemon(gguf, out, "--dtype", args.dtype, *args.mlxd_arg,
                                                env={"OPENBLAS_NUM_THREADS": str(args.threads)}))
            client = stack.enter_context(Client(daemon.addr))
            runs["mlxd"] = lambda prompt, n: common.timed_stream(client, prompt, n)
        anchors = {}
        if "mlx-lm" in args.engines:
            folder = common.mlx_lm_folder(gguf, args.dtype)
            anchors["mlx-lm"] = stack.enter_context(generate.start(
                "mlx-lm", folder, common.blas_env(args.threads), out / "mlx-lm.log"))
        if "llama.cpp" in args.engines:
            anchors["llama.cpp"] = stack.enter_context(generate.start(
                "llama-cpp", gguf, common.child_env(), out / "llama.cpp.log", "--threads", str(args.threads)))
        for engine, process in anchors.items():
            runs[engine] = functools.partial(generate.run, process)
        for run in runs.values():  # warm-up (kernels, allocators, thread pools); not reported
            run(common.prompt_ids(vocab, 128, salt=999_999), 16)
        rows = common.alternate(args.rounds, args.prompt_tokens, [e for e in ENGINES if e in runs],
                                lambda engine, n, round_: runs[engine](common.prompt_ids(vocab, n, 1000 * round_ + n),
                                                                      args.new_tokens),
                                out / "runs.jsonl")
    return [dict(r, model=name) for r in rows]


def table(rows: list[common.Row], args: argparse.Namespace) -> str:
    engines = [e for e in ENGINES if e in args.engines]
    ratios = [(a, b) for a, b in RATIOS if a in engines and b in engines]
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for kind in ("prefill", "decode"):
            for n in args.prompt_tokens:
                mine = common.select(rows, model=model, case=n)
                label = f"prefill @{n}" if kind == "prefill" else f"decode {args.new_tokens} after {n}"
                lines.append([model, label] + [common.median(mine, f"{kind}_tps", contender=e) for e in engines]
                             + [common.median_ratio(mine, f"{kind}_tps", a, b) for a, b in ratios])
    return common.table(["model", "metric", *engines, *(f"{a}/{b}" for a, b in ratios)], lines)


def same_heads(rows: list[common.Row]) -> dict[str, str]:
    """Per anchor: in how many (model, round, prompt) runs its first 8 greedy tokens equal mlxd's."""
    heads: dict[tuple, dict[str, list[int]]] = {}
    for r in rows:
        heads.setdefault((r["model"], r["case"], r["round"]), {})[r["contender"]] = r["head"]
    return {other: f"{sum(h['mlxd'] == h[other] for h in heads.values())}/{len(heads)}"
            for other in ("mlx-lm", "llama.cpp") if all(other in h and "mlxd" in h for h in heads.values())}


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--models", nargs="+", default=["smollm2", "llama-0.4b"],
                   help="smollm2, llama-0.4b, llama-1b or GGUF paths")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--prompt-tokens", type=int, nargs="+", default=[512, 2000])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="alternations per model (after one short warm-up)")
    p.add_argument("--threads", type=int, default=2,
                   help="llama.cpp's n_threads and OPENBLAS_NUM_THREADS for mlxd and mlx-lm")
    p.add_argument("--dtype", default="auto", help="mlxd serve --dtype, and the weights mlx-lm gets")
    p.add_argument("--mlxd-arg", action="append", default=[], help="an extra `mlxd serve` argument (repeat)")
    common.add_out_arg(p, "cpu_anchors")
    args = p.parse_args(argv)
    rows = [row for name in args.models for row in bench_model(name, args)]
    print(f"\nmedians of {args.rounds} alternated rounds (engine order rotating), dtype {args.dtype}, threads "
          f"{args.threads}, {os.cpu_count()} CPUs; logs in {args.out}; runs whose first 8 greedy tokens equal "
          f"mlxd's: {same_heads(rows)}")
    print(table(rows, args))
