"""`mlxd serve --tensor-parallel 2` against 1 rank on the CPU: one stream's prefill and decode tok/s and the
aggregate tok/s of 4 streams, on a random-weight Llama folder that fits (llama-0.2b by default, written once).
Numbers only: on the CPU both ranks share this host's cores (1 BLAS thread per rank against 2 for the single
rank, so each contender has the same cores), and the ring's all_sums go through loopback TCP; tensor parallelism
is for models that do not fit one device, or GPUs (issue 23).

    nice -n 5 python -m bench tensor_parallel [--shape llama-0.2b --rounds 2]
    python -m bench tensor_parallel --model /tmp/llama-8b --tp-arg=--tp-backend --tp-arg=ring   # one GPU

First it checks that both give the same greedy tokens (`--greedy-prompts` prompts of `--greedy-tokens` new
tokens each, over gRPC), as issue 23 asks; with `--tp-backend ring` on CUDA both ranks share the one GPU (a
correctness run: the all_sums go through the host)."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import common
from bench.daemon import Daemon
from mlxd_client import Client

CORES = 2


def model_folder(shape: str) -> Path:
    folder = common.MODELS / f"{shape}-bf16"
    if not (folder / "config.json").is_file():
        common.MODELS.mkdir(parents=True, exist_ok=True)
        common.run_quietly(common.bench_command("random_model", "--shape", shape, "--out", str(folder)))
    return folder


def measure(addr: str, vocab: int, salt: int, args) -> common.Row:
    with Client(addr) as client:
        one = common.timed_stream(client, common.prompt_ids(vocab, args.prompt_tokens, salt=salt), args.new_tokens)
        prompts = common.stream_prompts(vocab, args.streams, args.prompt_tokens, salt=salt + 1)
        with ThreadPoolExecutor(args.streams) as pool:
            t0 = time.perf_counter()
            results = list(pool.map(lambda p: common.timed_stream(client, p, args.new_tokens), prompts))
            wall = time.perf_counter() - t0
    return {"prefill_tps": one["prefill_tps"], "decode_tps": one["decode_tps"], "ttft_s": one["ttft_s"],
            "aggregate_tps": sum(r["new_tokens"] for r in results) / wall}


def greedy_runs(addr: str, vocab: int, prompts: int, new_tokens: int) -> list[list[tuple[int, float]]]:
    """Each prompt's greedy tokens (ignore_eos), one stream at a time, each with the margin of its choice: its
    log-probability less the runner-up's."""
    runs = []
    with Client(addr) as client:
        for i in range(prompts):
            stream = client.generate(tokens=common.prompt_ids(vocab, 32 + 7 * i, salt=77 + i), temperature=0.0,
                                     ignore_eos=True, max_tokens=new_tokens, logprobs=True, top_logprobs=2)
            run = []
            for response in stream:
                if response.HasField("chunk"):
                    for lp in response.chunk.logprobs:
                        others = [t.logprob for t in lp.top if t.token_id != lp.token_id]
                        run.append((lp.token_id, lp.logprob - max(others, default=float("-inf"))))
            runs.append(run)
    return runs


def parting(one: list[tuple[int, float]], two: list[tuple[int, float]]) -> str:
    """Where two greedy runs first differ, with each run's margin there ('equal' when they never do): a split
    model sums its partial products in another order, so a choice between near-equal tokens (a small margin) may
    fall the other way; a large margin at a difference is a bug."""
    for i, ((a, margin_a), (b, margin_b)) in enumerate(zip(one, two)):
        if a != b:
            return f"token {i} (margins {margin_a:.4f} / {margin_b:.4f})"
    return "equal"


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--shape", default="llama-0.2b", help="a bench.models.random_model shape (default: %(default)s)")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model", type=Path, help="an existing model folder in place of --shape's")
    p.add_argument("--serve-arg", action="append", default=[], help="an extra `mlxd serve` argument of both "
                   "daemons (repeat; e.g. --serve-arg=--kv-cache-mb --serve-arg=4096 when they share one GPU)")
    p.add_argument("--tp-arg", action="append", default=[], help="an extra `mlxd serve` argument of the 2-rank "
                   "daemon (repeat; e.g. --tp-arg=--tp-backend --tp-arg=ring)")
    p.add_argument("--greedy-prompts", type=int, default=4)
    p.add_argument("--greedy-tokens", type=int, default=64)
    common.add_out_arg(p, "tensor_parallel")
    args = p.parse_args(argv)
    model = args.model or model_folder(args.shape)
    # Both served at once (idle between their turns) and measured in alternation, so a shared machine's drift
    # falls on both alike.
    with Daemon(model, args.out / "tp1", "--max-batch-size", str(args.streams), *args.serve_arg,
                env={"OPENBLAS_NUM_THREADS": str(CORES)}) as one, \
            Daemon(model, args.out / "tp2", "--tensor-parallel", "2", "--max-batch-size", str(args.streams),
                   *args.serve_arg, *args.tp_arg, env={"OPENBLAS_NUM_THREADS": str(CORES // 2)}) as two:
        addrs = {1: one.addr, 2: two.addr}
        with Client(one.addr) as client:
            vocab = client.model_info().vocab_size
        greedy = {n: greedy_runs(addr, vocab, args.greedy_prompts, args.greedy_tokens) for n, addr in addrs.items()}
        parts = [parting(a, b) for a, b in zip(greedy[1], greedy[2])]
        smallest = min(m for run in greedy[1] for _, m in run)
        print(f"greedy tokens, 2 ranks against 1: {parts.count('equal')} of {args.greedy_prompts} prompts equal "
              f"({args.greedy_tokens} tokens each); where they part: {parts}; the 1-rank runs' smallest margin "
              f"{smallest:.4f}", flush=True)
        for addr in addrs.values():
            measure(addr, vocab, 999, args)  # warm-up
        rows = common.alternate(args.rounds, ["tp"], [1, 2],
                                lambda n, _, round_: measure(addrs[n], vocab, 1000 * round_, args),
                                args.out / "runs.jsonl")
    print(f"\nmlxd, {model.name}, {args.prompt_tokens}-token prompts, {args.new_tokens} "
          f"new tokens, medians of {args.rounds} rounds; logs in {args.out}")
    print(common.table(
        ["ranks", "prefill tok/s", "decode tok/s", "TTFT s", f"{args.streams} streams tok/s"],
        [[n, *(statistics.median(r[k] for r in rows if r["contender"] == n)
               for k in ("prefill_tps", "decode_tps", "ttft_s", "aggregate_tps"))] for n in (1, 2)]))


if __name__ == "__main__":
    main()
