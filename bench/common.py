"""What the benchmarks share: arguments, models by name, the child environment, prompts, the timing of one
gRPC stream, alternating rounds, medians of per-round ratios and the short table printed last.

Imports neither MLX nor gRPC, so an anchor's process (bench/anchors) can use it without loading mlxd's.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(tempfile.gettempdir()) / "mlxd-bench"
# Exports and random-weight files outlive a run: benchmarks reuse them by name.
MODELS = OUT / "models"

Row = dict[str, Any]
Case = TypeVar("Case", bound=Hashable)
Contender = TypeVar("Contender", bound=Hashable)


# -- processes ---------------------------------------------------------------------------------------------------

def child_env(**extra: str) -> dict[str, str]:
    """This environment, with the checkout's mlxd, client and bench/ importable (no install needed)."""
    env = dict(os.environ, **extra)
    paths = [str(ROOT), str(ROOT / "daemon"), str(ROOT / "clients" / "python")]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def blas_env(threads: int | None = None) -> dict[str, str]:
    """The environment `mlxd serve` gives itself on Linux (OpenBLAS preloaded, mlxd.launcher), for an anchor or an
    in-process engine: without it MLX's CPU matmuls use the reference BLAS and the comparison is unfair."""
    from mlxd.launcher import find_loadable_blas

    env = child_env(**({"OPENBLAS_NUM_THREADS": str(threads)} if threads else {}))
    if not sys.platform.startswith("linux"):
        return env
    blas, why = find_loadable_blas()
    if blas:
        env["LD_PRELOAD"] = ":".join(p for p in (blas, env.get("LD_PRELOAD", "")) if p)
        env["MLXD_BLAS_PRELOAD"] = f"openblas:{blas}"
    else:
        print(f"warning: no OpenBLAS to preload ({why}); CPU anchors run on MLX's reference BLAS", file=sys.stderr)
    return env


def reexec_with_blas(module: str, argv: list[str] | None) -> None:
    """For a benchmark that runs MLX in its own process: exec it again once with OpenBLAS preloaded (LD_PRELOAD
    works only at process start), as `mlxd serve` does itself, so its CPU numbers are the daemon's."""
    if not sys.platform.startswith("linux") or "MLXD_BLAS_PRELOAD" in os.environ:
        return
    env = blas_env()
    env.setdefault("MLXD_BLAS_PRELOAD", "none:no OpenBLAS found")  # once, found or not
    args = sys.argv[1:] if argv is None else argv
    os.execve(sys.executable, bench_command(module.rsplit(".", 1)[-1], *args), env)


def bench_command(name: str, *args: str) -> list[str]:
    """`python -m bench NAME ARGS` with this interpreter, for a step best run in a process of its own."""
    return [sys.executable, "-m", "bench", name, *args]


# -- arguments and models ----------------------------------------------------------------------------------------

def parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose --help prints the benchmark's docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_model_args(p: argparse.ArgumentParser, default: str = "smollm2") -> None:
    p.add_argument("--model", default=default,
                   help="smollm2 (SmolLM2-135M Q4_1, fetched once), llama-0.4b or llama-1b (random-weight Llama "
                        "GGUFs, written once), or a path: a GGUF file or a model folder (default: %(default)s)")
    p.add_argument("--dtype", default="auto", help="`mlxd serve --dtype` (default: %(default)s)")


def add_out_arg(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--out", type=Path, default=OUT / name, help="logs and per-run JSON lines (default: %(default)s)")


def resolve_model(spec: str | Path) -> Path:
    """A model name the benchmarks know, made or fetched once, or a path as given."""
    spec = str(spec)
    if spec == "smollm2":
        from mlxd.demo_models import fetch_model
        return fetch_model("smollm2")
    if spec.startswith("llama-") and not Path(spec).exists():
        path = MODELS / f"{spec}.Q4_0.gguf"
        if not path.is_file():
            MODELS.mkdir(parents=True, exist_ok=True)
            run_quietly(bench_command("llama_gguf", "--shape", spec, "--out", str(path)))
        return path
    path = Path(spec).expanduser()
    if not path.exists():
        raise SystemExit(f"no model at {path}")
    return path


def mlx_lm_folder(model: Path, dtype: str) -> Path:
    """A folder mlx-lm loads holding the arrays mlxd serves: a model folder as it is, a GGUF exported once."""
    if model.is_dir():
        return model
    folder = MODELS / f"mlx-{model.stem}-{dtype}"
    if not (folder / "config.json").is_file():
        run_quietly(bench_command("mlx_export", "--gguf", str(model), "--dtype", dtype, "--out", str(folder)))
    return folder


def run_quietly(cmd: list[str]) -> None:
    subprocess.run(cmd, env=child_env(), check=True, stdout=subprocess.DEVNULL)


# -- prompts -----------------------------------------------------------------------------------------------------

def prompt_ids(vocab_size: int, n: int, salt: int = 0) -> list[int]:
    """A fixed pseudo-random prompt, the same in every process; another salt changes every token, so no prefix
    cache helps. Ids stay clear of the vocabulary's first and last few (often special tokens)."""
    return [((i + 1009 * salt) * 7919 + 13) % (vocab_size - 10) + 5 for i in range(n)]


def stream_prompts(vocab_size: int, streams: int, length: int, mixed: bool = False, salt: int = 0) -> list[list[int]]:
    """Distinct prompts of `length` tokens, or with mixed, of lengths spread over [length / 2, 3 * length / 2)."""
    lengths = [length // 2 + (s * length) // max(streams, 1) if mixed else length for s in range(streams)]
    return [prompt_ids(vocab_size, n, salt=salt * 1000 + s) for s, n in enumerate(lengths)]


# -- timing ------------------------------------------------------------------------------------------------------

class Timer:
    """Times one generation as its caller sees it: seconds to the first tokens, then the tokens after them.

    Tokens that arrive with the first ones are not counted as decoded, so a stream that sends tokens in chunks
    and an engine that yields them one at a time are measured by the same rule."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first = 0.0
        self.tokens: list[int] = []
        self.with_first = 0

    def got(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if ids and not self.first:
            self.first, self.with_first = time.perf_counter(), len(ids)
        self.tokens += ids

    def result(self, prompt_tokens: int) -> Row:
        decode_s = time.perf_counter() - self.first
        return {"prompt_tokens": prompt_tokens, "new_tokens": len(self.tokens), "ttft_s": self.first - self.start,
                "decode_s": decode_s, "decoded": len(self.tokens) - self.with_first, "head": self.tokens[:8],
                "tokens": self.tokens}


def with_rates(row: Row) -> Row:
    """Prefill tok/s = prompt tokens / time to the first token; decode tok/s = tokens after it / their time."""
    return {**row, "prefill_tps": row["prompt_tokens"] / row["ttft_s"],
            "decode_tps": row["decoded"] / row["decode_s"] if row["decode_s"] > 0 else 0.0}


def timed_stream(client: Any, prompt: list[int], new_tokens: int) -> Row:
    """One greedy generation over gRPC (an mlxd_client.Client), timed by the client, with the daemon's own view."""
    timer, final = Timer(), None
    for response in client.generate(tokens=prompt, temperature=0.0, ignore_eos=True, max_tokens=new_tokens):
        if response.HasField("chunk"):
            timer.got(response.chunk.token_ids)
        else:
            final = response.final
    assert final is not None, "a stream ended without its final message"
    t = final.timings
    return with_rates({**timer.result(len(prompt)), "cached_tokens": final.usage.cached_tokens,
                       "server_ttft_s": t.time_to_first_token_seconds,
                       "server_prefill_tps": t.prefill_tokens_per_second,
                       "server_decode_tps": t.decode_tokens_per_second})


def batch_rates(start: float, all_started: float, end: float, tokens: int, streams: int) -> Row:
    """Concurrent streams: "total" from the first request to the last token (prefill included), "decode" from the
    moment every stream has its first token (each stream's first token is not counted there)."""
    return {"total_tps": tokens / (end - start),
            "decode_tps": (tokens - streams) / (end - all_started) if end > all_started else 0.0}


# -- rounds and summaries ----------------------------------------------------------------------------------------

def alternate(rounds: int, cases: Iterable[Case], contenders: Iterable[Contender],
              run: Callable[[Contender, Case, int], Row], log: Path | None = None) -> list[Row]:
    """Run every contender on every case in each round, the contenders' order rotating after each case, so a
    shared machine's drift falls on all of them alike. Rows carry round, case and contender; each goes to `log`
    as a JSON line and to stderr as it comes."""
    rows, order, cases = [], list(contenders), list(cases)
    with open(log, "a") if log else open(os.devnull, "w") as sink:
        for round_ in range(1, rounds + 1):
            for case in cases:
                for contender in order:
                    row = {"round": round_, "case": case, "contender": contender, **run(contender, case, round_)}
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                    print(f"round {round_} case {case} {contender}: "
                          f"{ {k: round(v, 3) for k, v in row.items() if isinstance(v, float)} }", file=sys.stderr)
                    rows.append(row)
                order = order[1:] + order[:1]
    return rows


@contextlib.contextmanager
def patched(settings: str) -> Iterator[None]:
    """Within the block, each `module.attribute=value` of `settings` (';' between them, values Python literals) set,
    then restored: one process comparing two settings of a switch in interleaved rounds (on a lent GPU machine two
    processes of the same code differed by as much as 0.3 in a speculation ratio, more than most changes make)."""
    saved = []
    try:
        for setting in filter(None, settings.split(";")):
            target, value = setting.split("=", 1)
            owner, attribute = _attribute_owner(target.strip())
            saved.append((owner, attribute, getattr(owner, attribute)))
            setattr(owner, attribute, ast.literal_eval(value.strip()))
        yield
    finally:
        for owner, attribute, value in reversed(saved):
            setattr(owner, attribute, value)


def variant(spec: str) -> tuple[str, str]:
    """A `--variant NAME:SETTINGS` argument as (name, settings for `patched`)."""
    name, colon, settings = spec.partition(":")
    if not colon or not name or "=" not in settings:
        raise SystemExit(f"--variant {spec!r}: expected NAME:module.attribute=value[;...]")
    return name, settings


def _attribute_owner(target: str) -> tuple[Any, str]:
    """The object holding the last name of a dotted path (a module, or a class in one) and that name."""
    names = target.split(".")
    for split in range(len(names) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(names[:split]))
        except ModuleNotFoundError:
            continue
        for name in names[split:-1]:
            owner = getattr(owner, name)
        return owner, names[-1]
    raise ValueError(f"{target!r}: no importable module in it")


def select(rows: list[Row], **where: Any) -> list[Row]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def median(rows: list[Row], key: str, **where: Any) -> float:
    return statistics.median(r[key] for r in select(rows, **where))


def spread(rows: list[Row], key: str, **where: Any) -> float:
    """(largest - smallest) / median of a value over rounds: how much the machine moved between them. A lent GPU
    host once ran the same free daemon at 528 and 251 tok/s two rounds apart (session 40); ratios of such rounds
    say nothing."""
    values = [r[key] for r in select(rows, **where)]
    middle = statistics.median(values) if values else 0.0
    return (max(values) - min(values)) / middle if middle else 0.0


NOISY = 0.10  # a baseline whose rounds spread more than this is flagged beside the ratios built on it


def round_ratios(rows: list[Row], key: str, a: Hashable, b: Hashable, **where: Any) -> list[float]:
    """a's value / b's within each round (and case) that ran both."""
    by_round = {(r["round"], r["case"], r["contender"]): r[key] for r in select(rows, **where)}
    pairs = sorted({(rd, case) for rd, case, _ in by_round}, key=str)
    return [by_round[rd, case, a] / by_round[rd, case, b] for rd, case in pairs
            if (rd, case, a) in by_round and (rd, case, b) in by_round]


def median_ratio(rows: list[Row], key: str, a: Hashable, b: Hashable, **where: Any) -> float:
    """The median over rounds of a's value / b's within one round (and case): adjacent runs share the machine's
    mood, so on a noisy host this is steadier than a ratio of medians or of the two best runs."""
    return statistics.median(round_ratios(rows, key, a, b, **where))


def ratio_interval(rows: list[Row], key: str, a: Hashable, b: Hashable, **where: Any) -> tuple[float, float, float]:
    """The geometric mean of the per-round ratios (`round_ratios`) and its 95 % bootstrap interval (2,000
    resamples, seeded: the same rows print the same interval). On the lent GPUs a 12-round median moved by 5-7 %
    between two commands of the same code (session 52): the interval says whether a bar is within that."""
    logs = [math.log(r) for r in round_ratios(rows, key, a, b, **where)]
    if not logs:
        return math.nan, math.nan, math.nan
    rng = random.Random(0)
    means = sorted(statistics.fmean(rng.choices(logs, k=len(logs))) for _ in range(2000))
    return math.exp(statistics.fmean(logs)), math.exp(means[50]), math.exp(means[1949])


def pooled_rows(logs: Iterable[Path]) -> list[Row]:
    """The rounds of several runs' logs (`alternate`'s JSON lines) as one run's: each log's rounds numbered apart.
    Pool only runs of the same code on the same machine."""
    rows = []
    for i, log in enumerate(logs):
        for line in Path(log).read_text().splitlines():
            row = json.loads(line)
            rows.append({**row, "round": (i, row["round"])})
    return rows


def table(header: list[str], lines: list[list[Any]]) -> str:
    """Columns as wide as their widest cell, text left, numbers right (floats to about 4 digits)."""
    def cell(v: Any) -> str:
        if not isinstance(v, float):
            return str(v)
        return f"{v:.{0 if abs(v) >= 1000 else 1 if abs(v) >= 100 else 2 if abs(v) >= 10 else 3}f}"

    cells = [header] + [[cell(v) for v in line] for line in lines]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(isinstance(line[i], (int, float)) for line in lines) for i in range(len(header))]
    aligned = (zip(row, widths, numeric, strict=True) for row in cells)
    return "\n".join("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in row).rstrip() for row in aligned)
