"""Which mx.distributed backend the ranks use, and the environment each rank needs for it.

- CPU (and Metal on one Mac): MLX's TCP ring, each rank listening on its address of a hostfile (MLX_HOSTFILE, a
  JSON list with one list of "ip:port" per rank, and MLX_RANK). On one host the addresses are loopback ports.
- CUDA: NCCL, which rank 0 bootstraps on NCCL_HOST_IP:NCCL_PORT (MLX_RANK, MLX_WORLD_SIZE), one GPU per rank: rank r
  takes the r-th GPU this process may use (of CUDA_VISIBLE_DEVICES when it is set), and too few are refused
  before any rank starts (NCCL refuses two ranks on one GPU: `python -m bench tp_probe`).

The choice is made once, from the device, in `backend_for`; everything else reads the environment it wrote, as
`mlx.launch` writes it for several hosts.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import mlx.core as mx

BACKENDS = ("auto", "nccl", "ring")


def backend_for(device: mx.Device, requested: str = "auto") -> str:
    """`requested`, or for "auto": "nccl" for CUDA GPUs, else "ring" (CPU, and Metal: JACCL needs Thunderbolt RDMA
    set up by hand). The ring on CUDA runs its all_sum on the CPU (MLX's ring group communicates on the CPU
    stream) and puts every rank on the same GPU: slow, but it lets several ranks share one GPU, which NCCL
    refuses (a correctness run of tensor parallelism on a one-GPU machine)."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; expected one of {', '.join(BACKENDS)}")
    cuda = device.type == mx.gpu and mx.cuda.is_available()
    if requested == "nccl" and not cuda:
        raise ValueError("the nccl backend needs CUDA GPUs")
    if requested != "auto":
        return requested
    return "nccl" if cuda else "ring"


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports free on `host` now (bound together, then released: another process may still take one
    before a rank binds it, which is unlikely)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_environments(ranks: int, backend: str, workdir: Path) -> list[dict[str, str]]:
    """The environment of each of `ranks` ranks on this host (rank 0's first), for `backend`."""
    if backend == "nccl":
        gpus = gpus_for(ranks)
        (port,) = map(str, free_ports(1))
        return [{"MLX_RANK": str(r), "MLX_WORLD_SIZE": str(ranks), "NCCL_HOST_IP": "127.0.0.1", "NCCL_PORT": port,
                 "CUDA_VISIBLE_DEVICES": gpu} for r, gpu in enumerate(gpus)]
    hostfile = workdir / "hostfile.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"] for port in free_ports(ranks)]))
    return [{"MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)} for r in range(ranks)]


def gpus_for(ranks: int, driver: Path = Path("/proc/driver/nvidia/gpus")) -> list[str]:
    """The GPU each of `ranks` NCCL ranks of this host takes, as its CUDA_VISIBLE_DEVICES: the GPUs this process
    may use in order (those CUDA_VISIBLE_DEVICES names, indices or UUIDs, when it is set; else the driver's, one
    folder each in `driver`). ValueError when there are fewer than `ranks`; when the count cannot be read, rank r
    takes GPU r as before."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [g.strip() for g in visible.split(",") if g.strip()]
    else:
        count = len(list(driver.iterdir())) if driver.is_dir() else ranks
        gpus = [str(i) for i in range(count)]
    if len(gpus) < ranks:
        raise ValueError(f"{ranks} ranks over NCCL need {ranks} GPUs, one a rank, and this process may use "
                         f"{len(gpus)}; --tp-backend ring runs every rank on one GPU (a correctness run: its "
                         "all_sums go through host memory)")
    return gpus[:ranks]


def environment_rank() -> int | None:
    """This process's rank when a launcher (ours or mlx.launch) started it as one rank of a group, else None."""
    rank = os.environ.get("MLX_RANK")
    started = "MLX_HOSTFILE" in os.environ or "MLX_WORLD_SIZE" in os.environ
    return int(rank) if rank is not None and started else None


def environment_size() -> int:
    """The number of ranks the launcher's environment names (the hostfile's entries, or MLX_WORLD_SIZE)."""
    if "MLX_WORLD_SIZE" in os.environ:
        return int(os.environ["MLX_WORLD_SIZE"])
    return len(json.loads(Path(os.environ["MLX_HOSTFILE"]).read_text()))


def environment_backend() -> str:
    """The backend the launcher's environment is for: NCCL's variables, else the ring's hostfile."""
    return "nccl" if "NCCL_HOST_IP" in os.environ else "ring"


def init_group(backend: str) -> mx.distributed.Group:
    """This rank's group, from the environment `local_environments` (or mlx.launch) set."""
    group = mx.distributed.init(strict=True, backend=backend)
    if group.size() < 2:
        raise RuntimeError(f"the {backend} group has {group.size()} rank: nothing to split")
    return group
