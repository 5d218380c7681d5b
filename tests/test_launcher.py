"""The launcher's choice of a BLAS to preload (mlxd/launcher.py): a library is preloaded only when its matmuls run
on this CPU, probed in a child process, so a build for other CPUs (cmeel-openblas 0.3.31 on an AVX2-only x86-64:
SIGILL in its small-matrix sgemm) costs speed, not the daemon."""

from __future__ import annotations

import ctypes.util
import sys

import pytest

from mlxd import launcher

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the preload is Linux's")


def test_a_probe_killed_by_a_signal_names_it(monkeypatch):
    monkeypatch.setattr(launcher, "_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    assert launcher.runs_here("/some/libopenblas.so.0") == \
        "/some/libopenblas.so.0 fails on this CPU (SIGILL in a float32 matmul)"


def test_a_library_without_cblas_fails_the_probe():
    libm = ctypes.util.find_library("m")
    assert libm
    why = launcher.runs_here(libm)
    assert why.startswith(f"{libm}: its probe exited with 1") and "cblas_sgemm" in why


def test_a_candidate_that_fails_here_is_skipped_with_its_reason(monkeypatch):
    libm = ctypes.util.find_library("m")
    monkeypatch.setattr(launcher, "blas_candidates", lambda: [libm, libm])
    monkeypatch.setattr(launcher, "runs_here", lambda path: f"{path} fails on this CPU (SIGILL in a float32 matmul)")
    path, why = launcher.find_loadable_blas()
    assert path is None and why.count("SIGILL") == 2


def test_the_installed_openblas_is_chosen_where_it_runs():
    candidates = launcher.blas_candidates()
    if not candidates:
        pytest.skip("no OpenBLAS installed")
    path, why = launcher.find_loadable_blas()
    assert (path is not None) == any(launcher.runs_here(c) == "" for c in candidates), why
