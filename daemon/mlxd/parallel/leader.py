"""Rank 0's model runtime under tensor parallelism: wait for every rank on the side channel, join the
mx.distributed group, load this rank's share, and build the scheduler's runner and prefix cache as replicating
ones (replication.py), so the warm-up and every request run on every rank."""

from __future__ import annotations

from dataclasses import dataclass

from mlxd.engine.prefix_cache import PrefixCache
from mlxd.engine.runner import Runner
from mlxd.engine.runtime import ModelRuntime
from mlxd.engine.worker import RuntimeFactory, Worker, ready
from mlxd.parallel.channel import Leader
from mlxd.parallel.group import init_group
from mlxd.parallel.replication import ReplicatingPrefixCache, ReplicatingRunner, Send

CONNECT_SECONDS = 120.0  # how long the other ranks may take to start and connect


@dataclass
class ReplicatedParts:
    send: Send

    def runner(self, runtime: ModelRuntime) -> Runner:
        self.send({"op": "runner"})
        return ReplicatingRunner(runtime.model, runtime.vocab_size, runtime.image_encoder, self.send)

    def prefix_cache(self, budget_bytes: int, runner: Runner) -> PrefixCache:
        assert isinstance(runner, ReplicatingRunner)
        self.send({"op": "prefix_cache", "budget": budget_bytes})
        return ReplicatingPrefixCache(budget_bytes, runner, self.send)


def leader_runtime(leader: Leader, backend: str) -> RuntimeFactory:
    """The worker's runtime factory on rank 0; a rank that fails or stalls from then on fails the worker."""

    def load(worker: Worker) -> ModelRuntime:
        from mlxd.loading.model_source import load_model_and_tokenizer

        leader.accept(CONNECT_SECONDS, worker.fail)
        group = init_group(backend)
        options = worker.options
        worker.loaded, worker.tokenizer = load_model_and_tokenizer(options.model_path, options.dtype, group)
        runtime = ModelRuntime.from_loaded(worker.loaded, worker.tokenizer, options.image_cache_bytes)
        runtime.parts = ReplicatedParts(leader.send)
        return ready(worker, runtime)

    return load
