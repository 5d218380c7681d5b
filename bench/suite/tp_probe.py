"""Whether MLX's NCCL backend runs two ranks on one GPU (issue 23 on a machine with one GPU): two processes, both
with CUDA_VISIBLE_DEVICES=0, join one NCCL group as `mlxd serve --tensor-parallel 2 --tp-backend nccl` would
(mlxd.parallel.group's environment, every other variable inherited, NCCL_NVLS_ENABLE among them) and all_sum a
vector; each prints what it got or the error. NCCL is expected to refuse two ranks on one device, which is why
`--tp-backend ring` exists for a one-GPU correctness run.

    python -m bench tp_probe [--timeout 60]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from mlxd.parallel.group import free_ports


def rank_main() -> None:
    import mlx.core as mx

    group = mx.distributed.init(strict=True, backend="nccl")
    total = mx.distributed.all_sum(mx.ones(4) * (group.rank() + 1), group=group)
    mx.eval(total)
    print(f"rank {group.rank()} of {group.size()}: all_sum {total.tolist()} (expected {[3.0] * 4})", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rank:
        rank_main()
        return
    (port,) = free_ports(1)
    ranks = []
    for rank in range(2):
        env = os.environ | {"MLX_RANK": str(rank), "MLX_WORLD_SIZE": "2", "NCCL_HOST_IP": "127.0.0.1",
                            "NCCL_PORT": str(port), "CUDA_VISIBLE_DEVICES": "0"}
        ranks.append(subprocess.Popen([sys.executable, "-m", "bench", "tp_probe", "--rank"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for rank, process in enumerate(ranks):
        try:
            out, _ = process.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
            out += f"\n(no answer in {args.timeout:.0f} s: killed)"
        tail = "\n".join(out.strip().splitlines()[-6:])
        print(f"== rank {rank}: exit {process.returncode}\n{tail}", flush=True)


if __name__ == "__main__":
    main()
