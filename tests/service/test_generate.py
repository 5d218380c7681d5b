"""Generation over a real gRPC channel against `mlxd serve` on the tiny llama fixture."""

import threading

import numpy as np
import pytest

from mlxd_client import pb
from tests.helpers.daemon_process import FIXTURES

pytestmark = pytest.mark.process


def greedy(client, ids, **kw):
    return client.complete(tokens=ids, temperature=0.0, ignore_eos=True, **kw)


def test_greedy_tokens_match_transformers(client, expected):
    ids = expected["input_ids"][0].tolist()
    result = greedy(client, ids, max_tokens=16)
    assert result.token_ids == expected["greedy_ids"].tolist()
    assert result.final.finish_reason == pb.FINISH_REASON_LENGTH
    assert result.final.usage.prompt_tokens == len(ids)
    assert result.final.usage.completion_tokens == 16


def test_streamed_text_equals_detokenized_ids(client, expected):
    ids = expected["input_ids"][0].tolist()
    deltas, tokens = [], []
    for response in client.generate(tokens=ids, temperature=0.0, ignore_eos=True, max_tokens=64):
        if response.HasField("chunk"):
            deltas.append(response.chunk.text)
            tokens += response.chunk.token_ids
            assert "\ufffd" not in response.chunk.text or "\ufffd" in client.detokenize(tokens)
    assert "".join(deltas) == client.detokenize(tokens)


def test_exactly_one_final_message_last(client):
    responses = list(client.generate("hello world", max_tokens=5, temperature=0.0))
    assert [r.HasField("final") for r in responses].count(True) == 1
    assert responses[-1].HasField("final")
    final = responses[-1].final
    assert final.timings.time_to_first_token_seconds > 0
    assert final.peak_memory_bytes > 0


def test_stop_string_never_streamed(client, expected):
    ids = expected["input_ids"][0].tolist()
    full = greedy(client, ids, max_tokens=48)
    text = full.text
    # A stop string that spans a token boundary, taken from the middle of the greedy output.
    start = len(text) // 3
    stop = text[start:start + 4]
    cut = text.index(stop)
    result = greedy(client, ids, max_tokens=48, stop=[stop])
    assert result.text == text[:cut]
    assert result.final.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert result.final.matched_stop == stop


def test_stop_token_id(client, expected):
    ids = expected["input_ids"][0].tolist()
    greedy_ids = expected["greedy_ids"].tolist()
    result = greedy(client, ids, max_tokens=16, stop_token_ids=[greedy_ids[5]])
    first = greedy_ids.index(greedy_ids[5])
    assert result.token_ids == greedy_ids[:first + 1]
    assert result.final.finish_reason == pb.FINISH_REASON_STOP
    assert result.final.stop_token_id == greedy_ids[5]


def test_seeded_sampling_is_reproducible(client):
    a = client.complete("abc", max_tokens=24, temperature=1.0, seed=7, ignore_eos=True)
    client.complete("something else", max_tokens=8, temperature=1.0)  # unseeded, in between
    b = client.complete("abc", max_tokens=24, temperature=1.0, seed=7, ignore_eos=True)
    c = client.complete("abc", max_tokens=24, temperature=1.0, seed=8, ignore_eos=True)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_logprobs_and_top_alternatives(client, expected):
    ids = expected["input_ids"][0].tolist()
    chunks = [r.chunk for r in client.generate(tokens=ids, temperature=0.0, ignore_eos=True, max_tokens=4,
                                               logprobs=True, top_logprobs=3) if r.HasField("chunk")]
    entries = [lp for c in chunks for lp in c.logprobs]
    assert len(entries) == 4
    for lp in entries:
        assert len(lp.top) == 3
        assert lp.top[0].token_id == lp.token_id  # greedy picks the most likely token
        assert abs(lp.top[0].logprob - lp.logprob) < 1e-6
        assert lp.top[0].logprob >= lp.top[1].logprob >= lp.top[2].logprob
    # The first generated token's logprob is log_softmax of transformers' last-position logits.
    logits = expected["logits"][-1].astype(np.float64)
    ref = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    assert abs(entries[0].logprob - ref[entries[0].token_id]) < 1e-3


def test_prompt_logprobs_match_transformers(client, expected):
    ids = expected["input_ids"][0].tolist()
    final = greedy(client, ids, max_tokens=1, prompt_logprobs=True).final
    assert len(final.prompt_logprobs) == len(ids) - 1
    logits = expected["logits"].astype(np.float64)
    norm = logits - logits.max(-1, keepdims=True)
    ref = norm - np.log(np.exp(norm).sum(-1, keepdims=True))
    for i, lp in enumerate(final.prompt_logprobs):
        assert lp.token_id == ids[i + 1]
        assert abs(lp.logprob - ref[i, ids[i + 1]]) < 1e-3


def test_chat_messages_use_the_chat_template(client):
    messages = [{"role": "user", "content": "hi"}]
    result = client.complete(messages=messages, max_tokens=3, temperature=0.0)
    rendered = client.stub.Tokenize(pb.TokenizeRequest(chat=pb.ChatMessages(
        messages=[pb.ChatMessage(role="user", content="hi")])))
    assert result.final.usage.prompt_tokens == len(rendered.ids)
    assert "".join(rendered.tokens).startswith("<bos>")


def test_model_info(client, daemon):
    info = client.model_info()
    assert info.architecture == "llama"
    assert info.vocab_size == 320
    assert info.context_length == 2048
    assert info.eos_token_ids == [2]
    assert info.bos_token_id == 1
    assert info.has_chat_template and not info.supports_vision
    assert info.digest.startswith("sha256:") and info.digest == daemon.ready["digest"]


def test_model_info_reports_mlx_memory(client):
    weights = (FIXTURES / "parity" / "llama" / "model.safetensors").stat().st_size
    before = client.model_info()
    # Float32 weights, held as loaded: live arrays hold at least them.
    assert 0.9 * weights < before.mlx_active_memory_bytes <= before.mlx_peak_memory_bytes
    client.complete(tokens=[5] * 300, max_tokens=4, temperature=0.0, ignore_eos=True)
    after = client.model_info()
    # The peak restarts when work arrives at an idle worker (it covers the requests running together), so it is
    # at least what the 300-token request left behind, not necessarily the peak seen before.
    assert after.mlx_peak_memory_bytes >= after.mlx_active_memory_bytes
    # The prompt's KV stays in the prefix cache, and is counted in active memory too.
    assert 0 < after.prefix_cache_bytes <= after.mlx_active_memory_bytes - 0.9 * weights


def test_tokenize_detokenize_round_trip(client):
    ids = client.tokenize("Hello, world!", add_special_tokens=True)
    assert ids[0] == 1
    assert client.detokenize(ids, skip_special_tokens=True) == "Hello, world!"


def test_expected_model_accepts_the_served_one(client):
    info = client.model_info()
    result = client.complete("x", max_tokens=1, expected_model=info.digest)
    assert result.final.usage.completion_tokens == 1


def test_a_repeated_prompt_reuses_its_prefix_and_reports_cached_tokens(client):
    ids = [(7 * i) % 200 + 3 for i in range(48)]
    cold = client.complete(tokens=ids, temperature=0.0, ignore_eos=True, max_tokens=12)
    warm = client.complete(tokens=ids, temperature=0.0, ignore_eos=True, max_tokens=12)
    assert warm.token_ids == cold.token_ids
    assert warm.final.usage.cached_tokens == len(ids) - 1  # every prompt token but the last, which decodes


def test_concurrent_streams_yield_what_they_yield_alone(client):
    prompts = [[(5 * i + 11 * s) % 250 + 3 for i in range(4 + 9 * s)] for s in range(6)]
    alone = [client.complete(tokens=p, temperature=0.0, ignore_eos=True, max_tokens=10 + s).token_ids
             for s, p in enumerate(prompts)]
    results = [None] * len(prompts)

    def run(s):
        results[s] = client.complete(tokens=prompts[s], temperature=0.0, ignore_eos=True, max_tokens=10 + s)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.token_ids for r in results] == alone
