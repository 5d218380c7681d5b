"""`bench first_requests` (the first two requests of each kind after the daemon's warm-up) runs end to end on a
fixture: the GPU lease's check that no request compiles kernels the warm-up did not, kept working between leases."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[1]


def test_first_requests_times_every_kind_and_mixed_batches():
    env = {**os.environ, "MLXD_BLAS_PRELOAD": "none:test", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "daemon"), str(ROOT / "clients" / "python"), str(ROOT)])}
    run = subprocess.run([sys.executable, "-m", "bench", "first_requests", "--model",
                          str(ROOT / "tests" / "fixtures" / "parity" / "llama"), "--speculate", "ngram",
                          "--batches", "3", "--new-tokens", "4", "--skip", "warm_up_batch",
                          "--set", "mlxd.models.llama.TransformerBlock.COMPILED_DECODE=True"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "skipped: warm_up_batch" in run.stdout
    assert "set: mlxd.models.llama.TransformerBlock.COMPILED_DECODE=True" in run.stdout
    labels = [line.split("  ")[0] for line in run.stdout.splitlines()[-11:]]
    assert labels[1:] == ["greedy", "greedy, drafting", "sampled", "sampled, drafting", "logprobs",
                          "logprobs, drafting", "constrained", "constrained, drafting", "3 rows, mixed",
                          "3 rows, mixed, drafting"]
