"""`mlxd serve --tensor-parallel 2` on the CPU (2 ranks over the TCP ring on loopback), over gRPC: concurrent
greedy streams of mixed prompt lengths (one decode batch, prompts in prefill chunks) give the tokens of the
1-rank model, a repeated prompt hits the prefix cache with the same tokens; SIGTERM stops every rank with 0; a
follower killed mid-stream ends the stream UNAVAILABLE within 2 s and the group exits non-zero; rank 0 SIGKILLed
leaves no follower behind."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import mlx.core as mx
import numpy as np
import pytest

from mlxd.engine.kv_budget import device_memory_bytes
from mlxd.loading.loader import load_model
from mlxd.parallel.channel import HEARTBEAT_TIMEOUT
from mlxd_client import Client, MlxdClientError, collect, pb
from tests.helpers.daemon_process import FIXTURES, running, start_daemon
from tests.helpers.parity_checks import greedy_with_cache

pytestmark = pytest.mark.process

NEW_TOKENS = 12
SCHEMA = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                     "additionalProperties": False})
# The ring named, not left to "auto" (NCCL on CUDA, which refuses two ranks on one GPU): these tests then also run
# on a machine with one GPU, both ranks on it (bench/gpu_steps.sh tp-tests).
RING = ("--tensor-parallel", "2", "--tp-backend", "ring")
TP = (*RING, "--prefill-chunk", "16", "--max-batch-size", "4")


def children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux): rank 0's followers."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _greedy(client: Client, ids: list[int]):
    return client.complete(tokens=ids, temperature=0.0, ignore_eos=True, max_tokens=NEW_TOKENS)


# Dense, MoE with a shared expert and gated-DeltaNet layers, and a vision-language model's text path.
@pytest.mark.parametrize("arch", ["llama", "qwen3_5_moe", "gemma3"])
def test_two_ranks_serve_the_tokens_of_one(arch, tmp_path):
    folder = FIXTURES / "parity" / arch
    daemon = start_daemon(folder, *TP, workdir=tmp_path)
    try:
        followers = children(daemon.proc.pid)
        assert len(followers) == 1
        rng = np.random.default_rng(0)
        prompts = [rng.integers(3, 300, n).tolist() for n in (7, 23, 61)]
        model = load_model(folder, fuse=True).model  # one rank, as served
        want = [greedy_with_cache(model, mx.array([p]), NEW_TOKENS) for p in prompts]
        with Client(daemon.addr) as client, ThreadPoolExecutor(len(prompts)) as pool:
            assert [r.token_ids for r in pool.map(lambda p: _greedy(client, p), prompts)] == want
            again = _greedy(client, prompts[2])
        assert again.token_ids == want[2] and again.final.usage.cached_tokens > 0
    finally:
        code = daemon.stop()
    assert code == 0, daemon.stderr()
    assert not any(running(pid) for pid in followers), "a follower outlived rank 0"
    # Both ranks' caches share this machine's memory: rank 0's default budget is its part of half of what is left.
    budget_mib = int(re.search(r"KV-cache budget of (\d+) MiB", daemon.stderr()).group(1))  # type: ignore[union-attr]
    assert budget_mib << 20 <= max(1 << 30, device_memory_bytes() // 4)


@pytest.mark.parametrize("arch", ["llama", "qwen3_5_moe"])
def test_ngram_speculation_with_two_ranks_gives_the_tokens_of_one(arch, tmp_path):
    """Drafts go to the other ranks with each verify step, and every rank rolls back the same columns (and, with
    gated-DeltaNet layers, each rank its heads' states to the same positions)."""
    _speculating_gives_the_tokens_of_one(FIXTURES / "parity" / arch, tmp_path, "--speculate", "ngram")


def test_a_draft_model_with_two_ranks_gives_the_tokens_of_one(tmp_path):
    """The draft model runs whole on rank 0; its drafts go to the other rank with each verify step."""
    _speculating_gives_the_tokens_of_one(FIXTURES / "parity" / "llama", tmp_path,
                                         "--draft-model", str(FIXTURES / "parity" / "qwen3"))


def _speculating_gives_the_tokens_of_one(folder: Path, tmp_path: Path, *drafting: str) -> None:
    daemon = start_daemon(folder, *TP, *drafting, "--speculate-fixed", workdir=tmp_path)
    try:
        prompts = [[5, 6, 7, 8, 9] * 6, [11, 12, 13] * 9 + [11]]  # repeats: prompt lookup drafts from step one
        model = load_model(folder, fuse=True).model
        want = [greedy_with_cache(model, mx.array([p]), NEW_TOKENS) for p in prompts]
        with Client(daemon.addr) as client, ThreadPoolExecutor(len(prompts)) as pool:
            got = list(pool.map(lambda p: _greedy(client, p), prompts))
        assert [r.token_ids for r in got] == want
        assert sum(r.final.usage.drafted_tokens for r in got) > 0
    finally:
        code = daemon.stop()
    assert code == 0, daemon.stderr()


def test_constrained_rows_draft_with_two_ranks(tmp_path):
    """Every rank cuts a constrained row's drafts with its own matcher and rolls it back: the same tokens as
    the same requests without speculation."""
    daemon = start_daemon(FIXTURES / "parity" / "llama", *TP, "--speculate", "ngram", "--speculate-fixed",
                          workdir=tmp_path)
    try:
        with Client(daemon.addr) as client:
            def one(ids: list[int], speculation: int | None):
                return client.complete(tokens=ids, max_tokens=48, temperature=0.0, speculation=speculation,
                                       constraint=pb.Constraint(json_schema=SCHEMA))

            prompts = [[7, 8, 9] * 5, [11, 12, 13, 14, 15] * 3]
            with ThreadPoolExecutor(len(prompts)) as pool:
                drafting = list(pool.map(lambda p: one(p, None), prompts))
            plain = [one(p, 0) for p in prompts]
            assert client.health() == "SERVING"
    finally:
        assert daemon.stop() == 0, daemon.stderr()
    assert [d.token_ids for d in drafting] == [p.token_ids for p in plain]
    assert sum(d.final.usage.drafted_tokens for d in drafting) > 0
    for completion in drafting:
        assert json.loads(completion.text).keys() == {"ok"}, completion.text


def _stream_cut_by(daemon, sig: int) -> tuple[int, float]:
    """A stream started, then `sig` sent to the follower once the first chunk came: the follower's pid and the
    seconds from the signal until the stream ended UNAVAILABLE."""
    (follower,) = children(daemon.proc.pid)
    with Client(daemon.addr) as client:
        stream = client.generate(tokens=[5] * 4, max_tokens=0, ignore_eos=True, timeout=30)
        assert next(stream).HasField("chunk")
        sent = time.monotonic()
        os.kill(follower, sig)
        with pytest.raises(MlxdClientError) as info:
            for _ in stream:
                pass
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        return follower, time.monotonic() - sent


def test_a_follower_killed_mid_stream_ends_streams_unavailable_and_the_group(tmp_path):
    daemon = start_daemon(FIXTURES / "parity" / "llama", *TP, workdir=tmp_path)
    _, seconds = _stream_cut_by(daemon, signal.SIGKILL)
    assert seconds < 2.0
    assert daemon.proc.wait(15) != 0
    assert "rank 1" in daemon.stderr().strip().splitlines()[-1]


def test_rank_0_killed_leaves_no_follower(tmp_path):
    daemon = start_daemon(FIXTURES / "parity" / "llama", *TP, workdir=tmp_path)
    (follower,) = children(daemon.proc.pid)
    daemon.proc.kill()
    daemon.proc.wait()
    deadline = time.monotonic() + 5
    while running(follower) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(follower)


def test_a_stalled_rank_0_is_left_by_its_followers(tmp_path):
    """SIGSTOP on rank 0: its heartbeats stop, so the follower exits after HEARTBEAT_TIMEOUT (across hosts no
    parent-death signal would end it); rank 0, continued, finds its follower gone and the group exits non-zero."""
    daemon = start_daemon(FIXTURES / "parity" / "llama", *TP, workdir=tmp_path)
    (follower,) = children(daemon.proc.pid)
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + HEARTBEAT_TIMEOUT + 5
        while running(follower) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(follower)
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert daemon.proc.wait(15) != 0
    assert "rank 0 stalled" in daemon.stderr()


def test_a_stalled_follower_ends_streams_unavailable_and_the_group(tmp_path):
    daemon = start_daemon(FIXTURES / "parity" / "llama", *TP, workdir=tmp_path)
    # SIGSTOP: alive, but neither computing nor sending heartbeats
    follower, seconds = _stream_cut_by(daemon, signal.SIGSTOP)
    assert seconds < HEARTBEAT_TIMEOUT + 1.0  # then at once
    assert daemon.proc.wait(15) != 0
    assert "rank 1 stalled" in daemon.stderr()
    deadline = time.monotonic() + 5
    while running(follower) and time.monotonic() < deadline:  # SIGKILLed with its parent, stopped or not
        time.sleep(0.05)
    assert not running(follower)


def test_sampled_and_constrained_requests(tmp_path):
    """Unseeded sampling runs on both ranks with the seed rank 0 drew (a divergence would stop the group); a
    JSON-schema constraint (every rank builds the matcher) gives valid JSON, the tokens of a 1-rank daemon."""
    daemon = start_daemon(FIXTURES / "parity" / "llama", *TP, workdir=tmp_path)
    try:
        with Client(daemon.addr) as client:
            sampled = [client.complete(tokens=[7, 8, 9], temperature=1.0, top_p=0.9, max_tokens=16,
                                       ignore_eos=True) for _ in range(3)]
            assert all(len(r.token_ids) == 16 for r in sampled)
            seeded = [client.complete(tokens=[7, 8, 9], temperature=1.0, seed=11, max_tokens=16,
                                      ignore_eos=True).token_ids for _ in range(2)]
            assert seeded[0] == seeded[1]
            constrained = _constrained(client)
            assert client.health() == "SERVING"
    finally:
        assert daemon.stop() == 0, daemon.stderr()
    (tmp_path / "one-rank").mkdir()
    single = start_daemon(FIXTURES / "parity" / "llama", workdir=tmp_path / "one-rank")
    try:
        with Client(single.addr) as client:
            assert [c.token_ids for c in _constrained(client)] == [c.token_ids for c in constrained]
    finally:
        assert single.stop() == 0, single.stderr()
    for completion in constrained:
        assert json.loads(completion.text).keys() == {"ok"}, completion.text
        assert completion.final.finish_reason == pb.FINISH_REASON_STOP


def _constrained(client: Client) -> list:
    """Greedy JSON-schema completions of two prompts, run one after the other and batched together."""
    def one(ids: list[int]):
        return client.complete(tokens=ids, max_tokens=48, temperature=0.0,
                               constraint=pb.Constraint(json_schema=SCHEMA))

    prompts = [[7, 8, 9], [11, 12, 13, 14, 15]]
    with ThreadPoolExecutor(len(prompts)) as pool:
        return [one(p) for p in prompts] + list(pool.map(one, prompts))


def test_an_image_prompt_gives_transformers_tokens(tmp_path):
    """Gemma 3's fixture prompt with its PNG, prefill chunks cutting the image span and prompt logprobs: the
    pixels go to the follower, whose vision tower (replicated) encodes them too."""
    folder = FIXTURES / "parity" / "gemma3"
    expected = mx.load(str(folder / "expected.safetensors"))
    ids = expected["input_ids"][0].tolist()
    daemon = start_daemon(folder, *RING, "--prefill-chunk", "5", workdir=tmp_path)
    try:
        with Client(daemon.addr) as client:
            result = collect(client.multimodal_generate([ids[:7], (folder / "image.png").read_bytes(), ids[13:]],
                                                        max_tokens=16, ignore_eos=True, temperature=0.0,
                                                        prompt_logprobs=True))
        assert result.token_ids == expected["greedy_ids"].tolist()
        assert [lp.token_id for lp in result.final.prompt_logprobs] == ids[1:]
    finally:
        assert daemon.stop() == 0, daemon.stderr()
