"""Starting and stopping the ranks of `mlxd serve --tensor-parallel N` on this host, and the ranks mlx.launch
starts on several hosts (docs/tensor-parallel.md).

This process is rank 0 (it serves); it starts ranks 1..N-1 as its children, each dying with it
(PR_SET_PDEATHSIG), and after its own drain tells them to exit and reaps them.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx

from mlxd.parallel.channel import Leader
from mlxd.parallel.group import backend_for, environment_backend, environment_size, local_environments

log = logging.getLogger(__name__)

EXIT_SECONDS = 10.0


@dataclass
class FollowerArgs:
    model: Path
    dtype: str
    image_cache_bytes: int
    log_level: str


@dataclass
class Ranks:
    leader: Leader
    backend: str
    children: list[subprocess.Popen] = field(default_factory=list)
    workdir: Path | None = None  # what start_local wrote for the ranks (the ring's hostfile)

    @property
    def sharing_device(self) -> int:
        """How many ranks share this process's device memory: all of them when this host runs them over the ring
        (one GPU, or the host's memory on a CPU); 1 under NCCL (a GPU each) or when mlx.launch placed them (this
        process then starts no ranks)."""
        return len(self.children) + 1 if self.backend == "ring" else 1

    def stop(self, code: int) -> int:
        """Tell every rank to exit, reap the ones this process started and remove what it wrote for them; the
        group's exit code (`code`, rank 0's, unless another rank failed)."""
        self.leader.close()
        for rank, child in enumerate(self.children, start=1):
            try:
                child_code = child.wait(EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                log.error("rank %d did not exit within %.0f s: killing it", rank, EXIT_SECONDS)
                child.kill()
                child_code = child.wait()
            if child_code != 0 and code == 0:
                code = 1
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code

    def exited(self) -> str | None:
        """The first rank this process started that has exited, as a reason, or None while all run."""
        for rank, child in enumerate(self.children, start=1):
            if child.poll() is not None:
                return f"rank {rank} exited with code {child.returncode} while the group was forming"
        return None


def start_local(ranks: int, args: FollowerArgs, backend: str = "auto") -> Ranks:
    """Ranks 1..ranks-1 on this host, over loopback (by default the ring on CPU, NCCL on CUDA: group.backend_for);
    this process becomes rank 0."""
    backend = backend_for(mx.default_device(), backend)
    workdir = Path(tempfile.mkdtemp(prefix="mlxd-tp-"))
    envs = local_environments(ranks, backend, workdir)
    os.environ.update(envs[0])
    leader = Leader("127.0.0.1", 0, ranks - 1)
    out = Ranks(leader, backend, workdir=workdir)
    for env in envs[1:]:
        command = [sys.executable, "-m", "mlxd.parallel.follower", *_follower_flags(args, leader.addr, backend),
                   "--die-with-parent"]
        out.children.append(subprocess.Popen(command, env=os.environ | env, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL))
    leader.lost = out.exited
    log.info("tensor parallelism: %d ranks on this host over %s", ranks, backend)
    return out


def start_launched(leader_addr: str) -> Ranks:
    """Rank 0 of a group mlx.launch started on several hosts: listen for the others on `leader_addr`."""
    host, port = leader_addr.rsplit(":", 1)
    return Ranks(Leader(host, int(port), environment_size() - 1), environment_backend())


def follower_argv(args: FollowerArgs, leader_addr: str) -> list[str]:
    """A follower's flags when mlx.launch started this process as a rank other than 0."""
    return _follower_flags(args, leader_addr, environment_backend())


def _follower_flags(args: FollowerArgs, leader_addr: str, backend: str) -> list[str]:
    return ["--model", str(args.model), "--dtype", args.dtype, "--leader", leader_addr, "--backend", backend,
            "--image-cache-bytes", str(args.image_cache_bytes), "--log-level", args.log_level]
