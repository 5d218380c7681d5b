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
import sys
import sysconfig

log = logging.getLogger(__name__)

_MARKER = "MLXD_BLAS_PRELOAD"   # set in the re-executed process: "openblas:<path>" or "none:<why>"


def blas_candidates() -> list[str]:
    """OpenBLAS libraries in the order we prefer them: the PyPI package, then Debian's."""
    site = sysconfig.get_paths()["purelib"]
    return (glob.glob(os.path.join(site, "cmeel.prefix", "lib", "libopenblas.so.0"))
            + glob.glob("/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0"))


def find_loadable_blas() -> tuple[str | None, str]:
    """The first candidate that the dynamic loader can open here (its own dependencies included)."""
    reasons = []
    for path in blas_candidates():
        try:
            ctypes.CDLL(path)
            return path, ""
        except OSError as error:
            reasons.append(f"{path}: {error}")
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
