"""Decode speed under a JSON Schema: N gRPC streams constrained against the same N unconstrained, and free streams
running beside constrained ones against the same streams beside free ones, alternating in one command.

    python -m bench constrained_decode [--model smollm2|PATH --streams 1 16 --new-tokens 128]
                                       [--mask-processes 0 3] [--schema short-strings|strings|records]
    python -m bench constrained_decode --pool OUT1/runs.jsonl OUT2/runs.jsonl ...

Greedy, ignore_eos. The schema (an array of at least 400 items) keeps the output open for the whole run, so each
stream generates as many tokens either way. Its items (--schema): `short-strings` (the default: strings of at most
12 characters, every few tokens a quote, a comma or an escape; llguidance's precomputed token sets serve no string
of bounded length, so its masks cost ~50x a common schema's), `strings` (strings of any length, as most schemas'
text fields), `records` (objects of a string, an integer in a range, an enum and an optional list of strings: an
extraction or tool-call schema). "mixed" runs half the streams
constrained and reports the free half's decode rate, against that same half in "free" (every stream free, the
batch as large): the target is >= 0.98. "constrained" against "free": the target is >= 0.95. Mask fill time per token
and the grammar compile time are measured in this process with the same tokenizer (llguidance, as the daemon).
Below the table, each ratio's geometric mean over the rounds with its 95 % bootstrap interval: on a lent GPU a
command's median moves by more than the distance to a bar, so judge the bar by the interval. --pool runs nothing:
it reports earlier runs' rounds together (the same code on one machine; session 52 pooled 27-29 rounds so).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench import common
from bench.daemon import Daemon
from mlxd_client import Client, pb

# At least 400 items: no model can complete them within a benchmark's tokens, so constrained streams run as long
# as free ones.
ITEMS = {
    "short-strings": {"type": "string", "maxLength": 12},
    "strings": {"type": "string"},
    "records": {"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "kind": {"enum": ["person", "company", "place"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4}},
        "required": ["name", "age", "kind"], "additionalProperties": False},
}


def constraint(items: str = "short-strings") -> pb.Constraint:
    """The benchmark's constraint: a JSON Schema array of at least 400 ITEMS[items]."""
    schema = {"type": "array", "items": ITEMS[items], "minItems": 400}
    return pb.Constraint(json_schema=json.dumps(schema), max_whitespace=2)


CONSTRAINT = constraint()


def streams(addr: str, prompts: list[list[int]], new_tokens: int, constrained: list[bool],
            chosen_constraint: pb.Constraint = CONSTRAINT) -> common.Row:
    """Every stream started together; decode tok/s of the constrained and of the free ones, each from the moment
    every stream has its first token."""
    firsts, counts, ends = [0.0] * len(prompts), [0] * len(prompts), [0.0] * len(prompts)

    def run(i: int) -> None:
        extra = {"constraint": chosen_constraint} if constrained[i] else {}
        with Client(addr) as client:
            for response in client.generate(tokens=prompts[i], temperature=0.0, ignore_eos=True,
                                            max_tokens=new_tokens, **extra):
                if response.HasField("chunk") and response.chunk.token_ids:
                    firsts[i] = firsts[i] or time.perf_counter()
                    counts[i] += len(response.chunk.token_ids)
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    row: common.Row = {}
    start = max(firsts)
    groups = {"constrained": [i for i, c in enumerate(constrained) if c],
              "free": [i for i, c in enumerate(constrained) if not c],
              "even": [i for i in range(len(prompts)) if i % 2 == 0]}  # the streams "mixed" leaves free
    for kind, chosen in groups.items():
        if chosen:
            row[f"{kind}_tps"] = sum(counts[i] - 1 for i in chosen) / (max(ends[i] for i in chosen) - start)
            row[f"{kind}_tokens"] = sum(counts[i] for i in chosen)
    return row


def mask_timings(model_tokenizer_json: str, vocab: int, eos: list[int], tokens: int,
                 chosen_constraint: pb.Constraint = CONSTRAINT) -> dict[str, float]:
    """Compile time of the schema and per-token mask fill p50/p99 (µs) along a lowest-allowed-token walk."""
    from mlxd.constraints import ConstraintSpec, GrammarCompiler, RowConstraint
    started = time.perf_counter()
    compiler = GrammarCompiler(model_tokenizer_json, vocab, eos)
    tables_s = time.perf_counter() - started
    started = time.perf_counter()
    grammar = compiler.compile(ConstraintSpec("json_schema", chosen_constraint.json_schema,
                                              max_whitespace=chosen_constraint.max_whitespace))
    compile_s = time.perf_counter() - started
    row = RowConstraint(grammar)
    mask = np.zeros(grammar.mask_words, dtype=np.int32)
    fills = []
    for _ in range(tokens):
        started = time.perf_counter()
        row.fill_bitmask(mask)
        fills.append(time.perf_counter() - started)
        allowed = np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little"))
        choices = [t for t in allowed if t not in eos]
        if not choices or row.is_stopped():
            break
        row.consume(int(choices[len(choices) // 2]))
    return {"tables_ms": tables_s * 1e3, "compile_ms": compile_s * 1e3,
            "fill_p50_us": float(np.percentile(fills, 50) * 1e6), "fill_p99_us": float(np.percentile(fills, 99) * 1e6)}


def _start(model: Path, out: Path, serve: list[str], processes: list[int]) -> dict[int, Daemon]:
    """A daemon for each --mask-processes value, started together (their warm-ups overlap; on a GPU each takes a
    minute or two); every one stopped if one fails to start."""
    with ThreadPoolExecutor(len(processes)) as pool:
        futures = {n: pool.submit(Daemon, model, out / f"mask-processes-{n}", *serve, "--mask-processes", str(n))
                   for n in processes}
    daemons = {n: f.result() for n, f in futures.items() if f.exception() is None}
    failed = [error for f in futures.values() if (error := f.exception()) is not None]
    if failed:
        for daemon in daemons.values():
            daemon.stop()
        raise failed[0]
    return daemons


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    common.add_model_args(p)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 16])
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="alternations per stream count (after a warm-up)")
    p.add_argument("--mask-processes", type=int, nargs="+", default=[0],
                   help="serve's --mask-processes; several values: a daemon each, their constrained and mixed "
                        "streams against the free streams of the first, in one command")
    p.add_argument("--schema", choices=sorted(ITEMS), default="short-strings", help="the array's items")
    p.add_argument("--kv-cache-mb", type=int, default=0,
                   help="each daemon's serve --kv-cache-mb (0: its own default, half the memory left after loading: "
                        "three 8B daemons on one 80 GB GPU, each taking half of what the ones before left, ran it "
                        "out of memory)")
    p.add_argument("--pool", type=Path, nargs="+", metavar="RUNS_JSONL",
                   help="run nothing: report these earlier runs' rounds together (the same code on one machine)")
    common.add_out_arg(p, "constrained_decode")
    args = p.parse_args(argv)
    if args.pool:
        return pool(args.pool)
    chosen_constraint = constraint(args.schema)
    model = common.resolve_model(args.model)
    processes = list(dict.fromkeys(args.mask_processes))

    with contextlib.ExitStack() as stack:
        serve = ["--dtype", args.dtype, "--max-batch-size", str(max(args.streams)),
                 "--kv-cache-mb", str(args.kv_cache_mb)]
        daemons = _start(model, args.out, serve, processes)
        for daemon in daemons.values():
            stack.callback(daemon.stop)
        with Client(daemons[processes[0]].addr) as client:
            info = client.model_info()

        def prompts(n: int, salt: int) -> list[list[int]]:  # new for each run: none served from the prefix cache
            return common.stream_prompts(info.vocab_size, n, args.prompt_tokens, salt=salt)

        # "constrained@P" and "mixed@P": on the daemon with P mask processes; "free": on the first one's.
        contenders = ["free"] + [f"{kind}@{n}" for n in processes for kind in ("constrained", "mixed")]

        def run(name: str, n: int, round_: int) -> common.Row:
            # mixed: the odd streams constrained, the even ones free (compared with the even ones of "free").
            kind, _, mask_processes = name.partition("@")
            daemon = daemons[int(mask_processes or processes[0])]
            chosen = {"constrained": [True] * n, "free": [False] * n, "mixed": [i % 2 == 1 for i in range(n)]}[kind]
            salt = len(contenders) * round_ + contenders.index(name)
            row = streams(daemon.addr, prompts(n, salt), args.new_tokens, chosen, chosen_constraint)
            return {**row, "tps": row["constrained_tps" if kind == "constrained" else "free_tps"],
                    "even_free_tps": row["even_tps"] if kind != "constrained" else 0.0}

        for n in args.streams:  # warm-up, the grammar compiled once in each daemon
            for mask_processes in processes:
                run(f"constrained@{mask_processes}", n, 0)
        rows = common.alternate(args.rounds, args.streams, contenders, run, args.out / "runs.jsonl")

    from mlxd.loading.model_source import load_model_tokenizer
    tokenizer = load_model_tokenizer(model)   # not the weights: the daemon holds the model already
    masks = mask_timings(tokenizer.serialized, info.vocab_size, list(info.eos_token_ids), args.new_tokens,
                         chosen_constraint)
    print(f"\n{model}, schema {args.schema}: prompts of {args.prompt_tokens} tokens, {args.new_tokens} new tokens "
          f"per stream, greedy, medians of {args.rounds} rounds; logs in {args.out}")
    report(rows, args.streams, processes)
    print(f"grammar: token tables {masks['tables_ms']:.0f} ms once per model, schema compile "
          f"{masks['compile_ms']:.1f} ms; mask fill per token p50 {masks['fill_p50_us']:.0f} us, "
          f"p99 {masks['fill_p99_us']:.0f} us")


def report(rows: list[common.Row], stream_counts: list[int], processes: list[int]) -> None:
    """The table of medians, then each ratio's geometric mean over rounds with its 95 % interval, then a line for
    each stream count whose free rounds spread more than common.NOISY."""
    lines: list[list[object]] = []
    intervals: list[str] = []
    for n in stream_counts:
        free = common.median(rows, "free_tps", case=n, contender="free")
        for mask_processes in processes:
            constrained, mixed = f"constrained@{mask_processes}", f"mixed@{mask_processes}"
            line: list[object] = [n, mask_processes, free,
                                  common.median(rows, "constrained_tps", case=n, contender=constrained),
                                  common.median_ratio(rows, "tps", constrained, "free", case=n)]
            interval = [common.ratio_interval(rows, "tps", constrained, "free", case=n)]
            if n > 1:
                line += [common.median(rows, "free_tps", case=n, contender=mixed),
                         common.median_ratio(rows, "even_free_tps", mixed, "free", case=n)]
                interval.append(common.ratio_interval(rows, "even_free_tps", mixed, "free", case=n))
            else:
                line += ["-", "-"]
            lines.append(line)
            rounds = len(common.round_ratios(rows, "tps", constrained, "free", case=n))
            intervals.append(f"{n} stream(s), {mask_processes} mask processes, {rounds} rounds: " + "; ".join(
                f"{label} {mean:.3f} [{low:.3f}, {high:.3f}]"
                for label, (mean, low, high) in zip(("constrained / free", "beside"), interval)))
    print(common.table(["streams", "mask processes", "free tok/s", "constrained tok/s", "constrained / free",
                        "free beside constrained", "ratio to beside free"], lines))
    print("geometric means of the rounds' ratios [95 % interval]:")
    for text in intervals:
        print(f"  {text}")
    for n in stream_counts:
        moved = common.spread(rows, "free_tps", case=n, contender="free")
        if moved > common.NOISY:
            print(f"noisy: the free daemon's rounds at {n} stream(s) spread {moved:.0%}: its ratios are not reliable")


def pool(logs: list[Path]) -> None:
    """--pool: earlier runs' rounds (their runs.jsonl) reported as one run's, nothing run."""
    rows = common.pooled_rows(logs)
    stream_counts = sorted({r["case"] for r in rows})
    processes = sorted({int(r["contender"].partition("@")[2]) for r in rows if "@" in r["contender"]})
    print(f"\n{len(logs)} runs pooled: {', '.join(map(str, logs))}")
    report(rows, stream_counts, processes)


if __name__ == "__main__":
    main()
