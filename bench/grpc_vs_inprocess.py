"""gRPC streaming cost: the same greedy generation through `mlxd serve` over gRPC and through the engine
in-process, alternating runs in one session, plus the Linux CPU fast path against MLX's default path.

    .venv/bin/python bench/grpc_vs_inprocess.py --model PATH [--prompt-tokens 256 --new-tokens 128 --rounds 3]

Prints a table of tokens/s and ratios last. Logs go to --log-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from daemon_process import daemon_env, start_daemon  # noqa: E402
from mlxd_client import Client  # noqa: E402


def inprocess(model: Path, args: argparse.Namespace, fast: bool, log_dir: Path) -> list[dict]:
    """Run bench/inprocess.py in a child: with OpenBLAS preloaded (fast) or as MLX's wheel ships (default)."""
    env = daemon_env()
    dtype = args.dtype
    prompt_tokens, new_tokens, runs = args.prompt_tokens, args.new_tokens, args.runs
    if fast:
        from mlxd.launcher import find_loadable_blas
        blas, _ = find_loadable_blas()
        if blas and sys.platform.startswith("linux"):
            env["LD_PRELOAD"] = blas
            env["MLXD_BLAS_PRELOAD"] = f"openblas:{blas}"
    else:
        env["MLXD_NO_BLAS_PRELOAD"] = "1"
        dtype = "keep"
        # The default path is one or two orders of magnitude slower: a shorter workload keeps the run short.
        prompt_tokens, new_tokens, runs = args.default_prompt_tokens, args.default_new_tokens, 1
    cmd = [sys.executable, str(ROOT / "bench" / "inprocess.py"), "--model", str(model), "--dtype", dtype,
           "--prompt-tokens", str(prompt_tokens), "--new-tokens", str(new_tokens), "--runs", str(runs)]
    with open(log_dir / f"inprocess-{'fast' if fast else 'default'}.log", "ab") as err:
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err, check=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def mlx_lm(model: Path, args: argparse.Namespace, log_dir: Path) -> list[dict]:
    cmd = [sys.executable, str(ROOT / "bench" / "mlx_lm_anchor.py"), "--model", str(model),
           "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--runs", str(args.runs)]
    env = dict(daemon_env(), PYTHONPATH=os.pathsep.join([str(ROOT / "bench"), daemon_env()["PYTHONPATH"]]))
    with open(log_dir / "mlx-lm.log", "ab") as err:
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err, check=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def over_grpc(addr: str, vocab_size: int, args: argparse.Namespace) -> list[dict]:
    from inprocess import prompt_ids
    results = []
    with Client(addr) as client:
        for run in range(args.runs + 1):  # the first run warms up and is not reported
            first = None
            count = 0
            final = None
            for response in client.generate(tokens=prompt_ids(vocab_size, args.prompt_tokens), temperature=0.0,
                                            ignore_eos=True, max_tokens=args.new_tokens):
                if response.HasField("chunk"):
                    count += len(response.chunk.token_ids)
                    if first is None:
                        first, first_count = time.perf_counter(), count
                else:
                    final = response.final
            elapsed = time.perf_counter() - first
            if not run:
                continue
            # Client-side decode rate: tokens received after the first, over the time they took to arrive.
            results.append({"prefill_tps": final.timings.prefill_tokens_per_second,
                            "decode_tps": (count - first_count) / elapsed,
                            "server_decode_tps": final.timings.decode_tokens_per_second})
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=2, help="generations per round and engine")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of in-process and gRPC")
    parser.add_argument("--skip-default-path", action="store_true")
    parser.add_argument("--default-prompt-tokens", type=int, default=64)
    parser.add_argument("--default-new-tokens", type=int, default=16)
    parser.add_argument("--mlx-lm", action="store_true", help="also run mlx-lm's generate_step (must be installed)")
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.mkdtemp(prefix="mlxd-bench-")))
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)

    # Every run sends the same prompt: without --prefix-cache-mb 0 the daemon would skip its prefill.
    daemon = start_daemon(args.model, "--dtype", args.dtype, "--log-level", "INFO", "--prefix-cache-mb", "0",
                          workdir=args.log_dir)
    try:
        with Client(daemon.addr) as client:
            vocab = client.model_info().vocab_size
        local, remote, anchor = [], [], []
        for _ in range(args.rounds):
            local += inprocess(args.model, args, True, args.log_dir)
            remote += over_grpc(daemon.addr, vocab, args)
            if args.mlx_lm:
                anchor += mlx_lm(args.model, args, args.log_dir)
    finally:
        daemon.stop()
    default = [] if args.skip_default_path else inprocess(args.model, args, False, args.log_dir)

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(f"model {args.model}, prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, "
          f"median of {len(local)} runs each; logs in {args.log_dir}")
    print(f"{'engine':40} {'prefill tok/s':>14} {'decode tok/s':>13}")
    print(f"{'in-process, fast path (anchor)':40} {med(local, 'prefill_tps'):14.1f} {med(local, 'decode_tps'):13.1f}")
    print(f"{'gRPC stream, fast path':40} {med(remote, 'prefill_tps'):14.1f} {med(remote, 'decode_tps'):13.1f}")
    if anchor:
        print(f"{'mlx-lm generate_step, in-process':40} {med(anchor, 'prefill_tps'):14.1f} "
              f"{med(anchor, 'decode_tps'):13.1f}")
    if default:
        print(f"{'in-process, MLX default path (short)':40} {med(default, 'prefill_tps'):14.1f} "
              f"{med(default, 'decode_tps'):13.1f}")
    print(f"gRPC / in-process decode: {med(remote, 'decode_tps') / med(local, 'decode_tps'):.3f}")
    if anchor:
        print(f"gRPC / mlx-lm decode: {med(remote, 'decode_tps') / med(anchor, 'decode_tps'):.3f}, "
              f"prefill: {med(remote, 'prefill_tps') / med(anchor, 'prefill_tps'):.3f}")
    if default:
        print(f"fast / default path: prefill {med(local, 'prefill_tps') / med(default, 'prefill_tps'):.1f}x, "
              f"decode {med(local, 'decode_tps') / med(default, 'decode_tps'):.1f}x")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
