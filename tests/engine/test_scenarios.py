"""Random serving scenarios (tests/engine/scenarios.py) on every cache kind the architectures bring: each request,
batched among others with arrivals, prefix-cache hits, speculation, constraints (real grammars among them), stop
strings, images, parked readers and cancellations, yields what it yields alone. A few seeds per architecture here;
`python -m tests.stress.scenarios` runs many (with a draft model, with mask processes)."""

from __future__ import annotations

import pytest

from mlxd.constraints import GrammarCompiler
from mlxd.engine.runtime import ModelRuntime
from mlxd.loading.model_source import load_model_and_tokenizer
from tests.engine.scenarios import check
from tests.engine.threaded_scenarios import check_threaded
from tests.helpers.parity import PARITY

# One of each cache kind: full attention (llama), sliding windows (gemma3_text, gpt_oss with sinks), KV shared across
# layers (gemma4), a latent cache (glm4_moe_lite), recurrent layers beside attention (qwen3_5, nemotron_h); and
# images in the prompt (gemma3's vision tower).
ARCHITECTURES = ["llama", "gemma3_text", "gpt_oss", "gemma4", "glm4_moe_lite", "qwen3_5", "nemotron_h", "gemma3"]
SEEDS = range(4)


def fixture_runtime(arch: str) -> ModelRuntime:
    loaded, tokenizer = load_model_and_tokenizer(PARITY / arch, dtype="float32")
    return ModelRuntime.from_loaded(loaded, tokenizer)


def fixture_grammars(arch: str, runtime: ModelRuntime, mask_processes: int = 0) -> GrammarCompiler:
    """A grammar compiler for the fixture's tokenizer (llguidance), its masks in `mask_processes` processes."""
    tokenizer_json = (PARITY / arch / "tokenizer.json").read_text(encoding="utf-8")
    return GrammarCompiler(tokenizer_json, runtime.vocab_size, sorted(runtime.eos_ids), mask_processes=mask_processes)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def served(request) -> tuple[ModelRuntime, GrammarCompiler]:
    runtime = fixture_runtime(request.param)
    return runtime, fixture_grammars(request.param, runtime)


@pytest.mark.parametrize("seed", SEEDS)
def test_each_request_yields_what_it_yields_alone(served, seed):
    runtime, grammars = served
    assert check(runtime, seed, grammars) == []


@pytest.mark.parametrize("seed", range(3))
def test_through_the_worker_thread_with_a_client_thread_each(seed):
    """The same, with the worker's thread stepping and each request's client a thread of its own (submits, reads
    at its own pace, cancels through the worker), as the service drives it."""
    runtime = fixture_runtime("llama")
    assert check_threaded(lambda: fixture_runtime("llama"), runtime, seed, fixture_grammars("llama", runtime)) == []
