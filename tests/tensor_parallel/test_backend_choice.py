"""Which mx.distributed backend the ranks of one host use (parallel/group.py backend_for, `--tp-backend`): by
default NCCL on CUDA and MLX's ring elsewhere; the ring on request, also on CUDA (ranks sharing one GPU); NCCL
refused where there is no CUDA GPU, before any rank starts."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxd.parallel import launch
from mlxd.parallel.group import backend_for


def test_auto_is_the_ring_on_the_cpu_and_nccl_on_cuda():
    assert backend_for(mx.Device(mx.cpu)) == "ring"
    assert backend_for(mx.Device(mx.gpu)) == ("nccl" if mx.cuda.is_available() else "ring")


def test_the_ring_may_be_asked_for_on_any_device():
    assert backend_for(mx.Device(mx.cpu), "ring") == backend_for(mx.Device(mx.gpu), "ring") == "ring"


@pytest.mark.skipif(mx.cuda.is_available(), reason="NCCL is there on CUDA")
def test_nccl_without_cuda_is_refused_before_any_rank_starts(tmp_path):
    with pytest.raises(ValueError, match="nccl backend needs CUDA"):
        launch.start_local(2, launch.FollowerArgs(tmp_path, "auto", 0, "INFO"), "nccl")


def test_an_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown backend 'mpi'"):
        backend_for(mx.Device(mx.cpu), "mpi")
