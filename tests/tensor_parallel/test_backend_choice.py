"""Which mx.distributed backend the ranks of one host use (parallel/group.py backend_for, `--tp-backend`): by
default NCCL on CUDA and MLX's ring elsewhere; the ring on request, also on CUDA (ranks sharing one GPU); NCCL
refused where there is no CUDA GPU, or fewer GPUs than ranks, before any rank starts; rank r on the r-th GPU
this process may use."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxd.parallel import launch
from mlxd.parallel.group import backend_for, gpus_for, local_environments


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


def test_nccl_ranks_take_the_gpus_this_process_may_use_in_order(monkeypatch, tmp_path):
    """Rank r's CUDA_VISIBLE_DEVICES is the r-th GPU of this process's own (not GPU r of the machine), and a host
    with fewer GPUs than ranks is refused with the way out, before any rank starts."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    envs = local_environments(2, "nccl", tmp_path)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "3"]
    assert {e["NCCL_PORT"] for e in envs} and [e["MLX_RANK"] for e in envs] == ["0", "1"]
    with pytest.raises(ValueError, match="3 ranks over NCCL need 3 GPUs.*may use 2.*--tp-backend ring"):
        gpus_for(3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    driver = tmp_path / "gpus"
    driver.mkdir()
    (driver / "0000:18:00.0").mkdir()
    with pytest.raises(ValueError, match="may use 1"):
        gpus_for(2, driver)
    (driver / "0000:2a:00.0").mkdir()
    assert gpus_for(2, driver) == ["0", "1"]
    assert gpus_for(4, tmp_path / "no driver") == ["0", "1", "2", "3"]  # unknown: as before
