"""Starting N processes that form one mx.distributed group over the TCP ring on loopback (MLX's ring backend:
MLX_RANK and a hostfile of each rank's address, as `mlxd serve --tensor-parallel N` writes them), as
tensor-parallel tests need."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlxd.parallel.group import local_environments

ROOT = Path(__file__).resolve().parents[2]


def run_ranks(module: str, args: list[str], ranks: int, workdir: Path, timeout: float = 120) -> list[str]:
    """Run `python -m module *args` as ranks 0..ranks-1 of one ring group; their stdouts, in rank order. Raises
    AssertionError with every rank's stderr if one fails or they outlast `timeout`."""
    procs = []
    for env in local_environments(ranks, "ring", workdir):
        procs.append(subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=os.environ | env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            outputs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(code != 0 for code, _, _ in outputs):
        report = "\n".join(f"rank {r}: exit {code}\n{err[-3000:]}" for r, (code, _, err) in enumerate(outputs))
        raise AssertionError(f"a rank failed:\n{report}")
    return [out for _, out, _ in outputs]
