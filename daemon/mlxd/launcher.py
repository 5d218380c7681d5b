"""Preload an optimized BLAS before MLX starts (DESIGN.md §5).

The Linux CPU wheel of MLX links the reference BLAS (~1.5 GFLOP/s); OpenBLAS preloaded gives ~190 GFLOP/s
on float32 matmuls. LD_PRELOAD only works at process start, so `mlxd serve` re-executes itself once with it
set; exec keeps the pid, so a parent that spawned the daemon still sees its own child.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import signal
import subprocess
import sys
import sysconfig

log = logging.getLogger(__name__)

_MARKER = "MLXD_BLAS_PRELOAD"   # set in the re-executed process: "openblas:<path>" or "none:<why>"


def blas_candidates() -> list[str]:
    """OpenBLAS libraries in the order we prefer them: the PyPI package, then Debian's."""
    site = sysconfig.get_paths()["purelib"]
    return (glob.glob(os.path.join(site, "cmeel.prefix", "lib", "libopenblas.so.0"))
            + glob.glob("/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0"))


# Small float32 matmuls in every transposition, beta 0 and 1, then one past OpenBLAS's small-matrix kernels, in
# a child process: a library built for other CPUs dies of SIGILL there instead of in the daemon. (cmeel-openblas
# 0.3.31's small-matrix sgemm uses AVX-512 on a CPU that has only AVX2, e.g. AMD's EPYC of Zen 2/3.)
_PROBE = """
import ctypes, sys
blas = ctypes.CDLL(sys.argv[1])
F = ctypes.c_float
for n in (2, 7, 16, 130):
    a, b, c = (F * (n * n))(*([0.5] * n * n)), (F * (n * n))(*([0.25] * n * n)), (F * (n * n))()
    for ta in (111, 112):
        for tb in (111, 112):
            for beta in (0.0, 1.0):
                blas.cblas_sgemm(101, ta, tb, n, n, n, F(1.0), a, n, b, n, F(beta), c, n)
"""


def runs_here(path: str) -> str:
    """"" when the OpenBLAS at `path` multiplies on this CPU (the probe above, in a child process), else why not."""
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE, path], capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return f"{path}: its probe matmuls did not finish in 60 s"
    if probe.returncode == 0:
        return ""
    if probe.returncode < 0:
        return f"{path} fails on this CPU ({signal.Signals(-probe.returncode).name} in a float32 matmul)"
    return f"{path}: its probe exited with {probe.returncode}: {probe.stderr.decode(errors='replace')[-300:]}"


def find_loadable_blas() -> tuple[str | None, str]:
    """The first candidate that the dynamic loader can open here (its own dependencies included) and whose
    matmuls run on this CPU."""
    reasons = []
    for path in blas_candidates():
        try:
            ctypes.CDLL(path)
        except OSError as error:
            reasons.append(f"{path}: {error}")
            continue
        why = runs_here(path)
        if not why:
            return path, ""
        reasons.append(why)
    return None, "; ".join(reasons) or "no OpenBLAS found (pip install cmeel-openblas)"


def reexec_with_blas() -> None:
    """On Linux, exec this command again, as it was started, with OpenBLAS preloaded; returns only when that is
    not done."""
    if not sys.platform.startswith("linux") or _MARKER in os.environ or os.environ.get("MLXD_NO_BLAS_PRELOAD"):
        return
    path, why = find_loadable_blas()
    env = dict(os.environ)
    if path is None:
        env[_MARKER] = f"none:{why}"
        os.environ.update(env)
        return
    env[_MARKER] = f"openblas:{path}"
    env["LD_PRELOAD"] = ":".join(p for p in (path, env.get("LD_PRELOAD", "")) if p)
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def blas_note() -> str:
    """A sentence for the log saying which BLAS this process runs with."""
    if not sys.platform.startswith("linux"):
        return "BLAS: platform default"
    marker = os.environ.get(_MARKER, "")
    if marker.startswith("openblas:"):
        return f"BLAS: OpenBLAS preloaded from {marker.split(':', 1)[1]}"
    if marker.startswith("none:"):
        return f"BLAS: reference BLAS (slow float32 matmuls): {marker.split(':', 1)[1]}"
    return "BLAS: not preloaded (MLXD_NO_BLAS_PRELOAD or started without the launcher)"
