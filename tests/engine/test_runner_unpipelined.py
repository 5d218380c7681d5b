"""A runner that is not pipelined (the CPU's: MLX computes a step while it launches it, so the pipeline overlapped
nothing and delivered every token a step late) returns each step's own tokens from the call that queued it, the
same tokens the pipelined runner returns a call later; the scheduler built with SchedulerOptions.pipelined False
streams the same requests alike, and the worker chooses it on the CPU."""

from __future__ import annotations

from pathlib import Path

from mlxd.engine.request import GenerationRequest
from mlxd.engine.runner import Runner
from mlxd.engine.scheduler import Scheduler, SchedulerOptions
from mlxd.engine.worker import WorkerOptions
from mlxd.generation.params import SamplingParams
from tests.helpers.engine_runs import drain, run
from tests.helpers.fakes import FakeModel, fake_runtime


def _steps(pipelined: bool) -> list[list[tuple[int, list[int]]]]:
    runner = Runner(FakeModel(), 64, pipelined=pipelined)
    for row, prompt in enumerate(([3, 4, 5], [7, 8])):
        runner.open(row, SamplingParams(temperature=0.0), prompt, None)
        runner.prefill(row, prompt[:-1])
        runner.join(row, prompt[-1])
    return [[(r.row, r.tokens) for r in runner.step()] for _ in range(5)]


def test_each_step_returns_its_own_tokens_the_pipelined_ones():
    pipelined, unpipelined = _steps(True), _steps(False)
    assert pipelined[0] == [] and all(unpipelined)
    assert unpipelined[:4] == pipelined[1:]


def test_a_scheduler_not_pipelined_streams_the_same_requests():
    outputs = []
    for pipelined in (True, False):
        requests = [GenerationRequest(f"r{i}", [1 + i, 9, 4 + i], SamplingParams(temperature=0.0), max_tokens=6 + i,
                                      ignore_eos=True) for i in range(3)]
        run(Scheduler(fake_runtime(), SchedulerOptions(4, 4, pipelined=pipelined)), *requests)
        outputs.append([drain(request)[:2] for request in requests])
    assert outputs[0] == outputs[1] and all(len(ids) == 6 + i for i, (ids, _) in enumerate(outputs[0]))


def test_the_worker_reads_each_step_at_once_on_the_cpu():
    assert WorkerOptions(Path("m")).scheduler_options().pipelined is False  # the tests run on the CPU
