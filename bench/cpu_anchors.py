"""CPU prefill and decode tokens/s: mlxd over gRPC vs mlx-lm's generate_step in-process on the same weights vs
llama.cpp (llama-cpp-python) on the same GGUF, alternating the three in one command.

    bash scripts/bench_env.sh     # once: .bench-venv with mlx-lm and llama-cpp-python
    nice -n 5 .bench-venv/bin/python bench/cpu_anchors.py --out /tmp/cpu-anchors [--models smollm2 llama-0.4b]

Models: "smollm2" (SmolLM2-135M-Instruct Q4_1, fetched once), "llama-0.4b" (a random-weight Llama GGUF that
bench/llama_gguf.py writes into --out), or a path to a GGUF file. mlx-lm gets exactly the arrays mlxd serves
(bench/mlx_export.py) and OpenBLAS preloaded as `mlxd serve` preloads it. Each engine lives in its own
process, loaded once and warmed up with a short generation; every round runs each prompt length on every
engine in turn (the order rotates after each), with a new prompt each time so no prefix cache helps. Prefill tok/s = prompt tokens / time to first
token seen by the caller (for mlxd: the gRPC client); decode tok/s = tokens after the first / their time.
The table printed last has medians of the per-round values and of the per-round ratios. Logs go to --out.
On a shared machine prefer --threads 1: with 2 threads on 2 cores, OpenBLAS's and llama.cpp's thread barriers
slow down ~10x whenever another process holds a core (measured: a float32 gemv at 0.4 GB/s instead of 5.5).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gguf import GGUFReader as gguf_reader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from cpu_engines import prompt_ids  # noqa: E402
from daemon_process import daemon_env, start_daemon  # noqa: E402
from mlxd_client import Client  # noqa: E402

ENGINES = ("mlxd", "mlx-lm", "llama.cpp")


def blas_env(threads: int) -> dict[str, str]:
    """The environment `mlxd serve` gives itself: OpenBLAS preloaded (mlxd.launcher), here with `threads`."""
    from mlxd.launcher import find_loadable_blas
    env = dict(daemon_env(), OPENBLAS_NUM_THREADS=str(threads))
    blas, why = find_loadable_blas()
    if blas and sys.platform.startswith("linux"):
        env["LD_PRELOAD"] = ":".join(p for p in (blas, env.get("LD_PRELOAD", "")) if p)
        env["MLXD_BLAS_PRELOAD"] = f"openblas:{blas}"
    elif sys.platform.startswith("linux"):
        print(f"warning: no OpenBLAS for mlx-lm ({why}); the comparison is unfair", file=sys.stderr)
    return env


class Child:
    """An engine from bench/cpu_engines.py in its own process, answering one JSON line per job."""

    def __init__(self, engine: str, model: Path, threads: int, env: dict[str, str], log: Path) -> None:
        cmd = [sys.executable, str(ROOT / "bench" / "cpu_engines.py"), "--engine", engine, "--model", str(model),
               "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "ab"),
                                     env=env, text=True)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args[3]} exited with {self.proc.wait()}; see its log")
        return json.loads(line)

    def run(self, prompt: list[int], new_tokens: int) -> dict:
        self.proc.stdin.write(json.dumps({"prompt": prompt, "new_tokens": new_tokens}) + "\n")
        self.proc.stdin.flush()
        r = self._read()
        return {"prefill_tps": len(prompt) / r["ttft_s"], "decode_tps": (r["new_tokens"] - 1) / r["decode_s"], **r}

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


class MlxdStream:
    """mlxd as its users see it: a greedy generation streamed over gRPC, timed by the client."""

    def __init__(self, addr: str) -> None:
        self.client = Client(addr)

    def run(self, prompt: list[int], new_tokens: int) -> dict:
        start = time.perf_counter()
        first, tokens, final = None, [], None
        for response in self.client.generate(tokens=prompt, temperature=0.0, ignore_eos=True, max_tokens=new_tokens):
            if response.HasField("chunk"):
                if first is None and response.chunk.token_ids:
                    first, first_count = time.perf_counter(), len(response.chunk.token_ids)
                tokens += response.chunk.token_ids
            else:
                final = response.final
        end = time.perf_counter()
        t = final.timings
        # Tokens that came with the first chunk are not counted as decoded: the same rule as the others.
        return {"prefill_tps": len(prompt) / (first - start), "decode_tps": (len(tokens) - first_count) / (end - first),
                "ttft_s": first - start, "prompt_tokens": len(prompt), "new_tokens": len(tokens),
                "head": list(tokens[:8]),
                "server_ttft_s": t.time_to_first_token_seconds, "server_prefill_tps": t.prefill_tokens_per_second,
                "server_decode_tps": t.decode_tokens_per_second, "cached_tokens": final.usage.cached_tokens}

    def close(self) -> None:
        self.client.close()


def model_gguf(name: str, out: Path) -> Path:
    if name == "smollm2":
        from mlxd.loading.gguf.fetch import fetch_model
        return fetch_model("smollm2")
    if name.startswith("llama-"):
        path = out / f"{name}.Q4_0.gguf"
        if not path.is_file():
            subprocess.run([sys.executable, str(ROOT / "bench" / "llama_gguf.py"), "--shape", name, "--out", str(path)],
                           env=daemon_env(), check=True, stdout=subprocess.DEVNULL)
        return path
    return Path(name)


def mlx_folder(gguf: Path, dtype: str, out: Path) -> Path:
    folder = out / f"mlx-{gguf.stem}-{dtype}"
    if not (folder / "config.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "bench" / "mlx_export.py"), "--gguf", str(gguf), "--dtype", dtype,
                        "--out", str(folder)], env=daemon_env(), check=True, stdout=subprocess.DEVNULL)
    return folder


def bench_model(name: str, args: argparse.Namespace) -> list[dict]:
    gguf = model_gguf(name, args.out)
    log_dir = args.out / Path(name).stem
    log_dir.mkdir(parents=True, exist_ok=True)
    contenders = {}
    try:
        if "mlxd" in args.engines:
            daemon = start_daemon(gguf, "--dtype", args.dtype, "--log-level", "INFO", *args.mlxd_arg,
                                  workdir=log_dir, timeout=600, env={"OPENBLAS_NUM_THREADS": str(args.threads)})
            contenders["mlxd"] = MlxdStream(daemon.addr)
        if "mlx-lm" in args.engines:
            contenders["mlx-lm"] = Child("mlx-lm", mlx_folder(gguf, args.dtype, args.out), args.threads,
                                         blas_env(args.threads),
                                         log_dir / "mlx-lm.log")
        if "llama.cpp" in args.engines:
            contenders["llama.cpp"] = Child("llama-cpp", gguf, args.threads, daemon_env(), log_dir / "llama.cpp.log")
        vocab = len(gguf_reader(gguf).fields["tokenizer.ggml.tokens"].data)
        for engine in contenders:  # warm-up (kernels, allocators, thread pools); not reported
            contenders[engine].run(prompt_ids(vocab, 128, salt=999_999), 16)
        rows = []
        order = list(contenders)
        with open(log_dir / "runs.jsonl", "a") as log:
            for round_ in range(1, args.rounds + 1):
                for n in args.prompt_tokens:
                    prompt = prompt_ids(vocab, n, salt=1000 * round_ + n)
                    for engine in order:
                        row = {"model": name, "round": round_, "engine": engine,
                               **contenders[engine].run(prompt, args.new_tokens)}
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                        print(f"{name} round {round_} {engine:9} prompt {n:5}: ttft {row['ttft_s']:.2f} s, "
                              f"decode {row['decode_tps']:.1f} tok/s", file=sys.stderr)
                        rows.append(row)
                    order = order[1:] + order[:1]
        return rows
    finally:
        for c in contenders.values():
            c.close()
        if "mlxd" in contenders:
            daemon.stop()


def table(rows: list[dict], args: argparse.Namespace) -> str:
    engines = [e for e in ENGINES if e in args.engines]
    head = f"{'model':12} {'metric':22}" + "".join(f"{e:>11}" for e in engines)
    ratios = [(a, b) for a, b in (("mlxd", "mlx-lm"), ("mlxd", "llama.cpp")) if a in engines and b in engines]
    head += "".join(f"{a + '/' + b:>16}" for a, b in ratios)
    lines = [head]
    for model in dict.fromkeys(r["model"] for r in rows):
        for kind in ("prefill", "decode"):
            for n in args.prompt_tokens:
                cell = {(r["engine"], r["round"]): r[f"{kind}_tps"] for r in rows
                        if r["model"] == model and r["prompt_tokens"] == n}
                rounds = sorted({k[1] for k in cell})
                label = f"{kind} @{n}" if kind == "prefill" else f"decode {args.new_tokens} after {n}"
                line = f"{model:12} {label:22}"
                line += "".join(f"{statistics.median(cell[e, i] for i in rounds):11.1f}" for e in engines)
                line += "".join(f"{statistics.median(cell[a, i] / cell[b, i] for i in rounds):16.3f}"
                                for a, b in ratios)
                lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["smollm2", "llama-0.4b"],
                        help="smollm2, llama-0.4b, llama-1b (random Llama GGUFs) or GGUF paths")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[512, 2000])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="alternations per model (after one short warm-up)")
    parser.add_argument("--threads", type=int, default=2,
                        help="llama.cpp's n_threads and OPENBLAS_NUM_THREADS for mlxd and mlx-lm")
    parser.add_argument("--dtype", default="auto", help="mlxd serve --dtype, and the weights mlx-lm gets")
    parser.add_argument("--mlxd-arg", action="append", default=[], help="extra `mlxd serve` argument (repeat)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mlxd-cpu-anchors"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        rows += bench_model(name, args)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    heads: dict[tuple, dict[str, list[int]]] = {}
    for r in rows:
        heads.setdefault((r["model"], r["prompt_tokens"], r["round"]), {})[r["engine"]] = r["head"]
    same = {other: f"{sum(h['mlxd'] == h[other] for h in heads.values())}/{len(heads)}"
            for other in ("mlx-lm", "llama.cpp") if other in args.engines and "mlxd" in args.engines}
    print(f"\nmedians of {args.rounds} alternated rounds (engine order rotating), dtype {args.dtype}, threads "
          f"{args.threads}, {os.cpu_count()} CPUs; logs in {args.out}; runs whose first 8 greedy tokens equal "
          f"mlxd's: {same}")
    print(table(rows, args))


if __name__ == "__main__":
    main()
