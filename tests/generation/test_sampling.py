"""Sampling: each filter on fixed arrays with hand-computed values, then the Sampler end to end."""

import math
from collections import Counter

import mlx.core as mx
import numpy as np
import pytest

from mlxd.errors import InvalidRequest
from mlxd.generation.sampling import (
    Sampler,
    SamplingParams,
    apply_logit_bias,
    apply_min_p,
    apply_presence_frequency,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    logprobs,
    top_logprobs,
)

NEG = -math.inf


def values(a: mx.array) -> list[float]:
    return np.array(a).tolist()


# -- filters ---------------------------------------------------------------------------------------------------


def test_repetition_penalty_divides_positive_and_multiplies_negative_once_per_id():
    logits = mx.array([2.0, -1.0, 3.0, 0.5])
    out = apply_repetition_penalty(logits, mx.array([0, 1, 1, 0]), 2.0)
    assert values(out) == [1.0, -2.0, 3.0, 0.5]
    assert values(logits) == [2.0, -1.0, 3.0, 0.5]  # the input is not modified


def test_repetition_penalty_on_batched_logits():
    out = apply_repetition_penalty(mx.array([[4.0, -4.0, 1.0]]), mx.array([0, 1]), 4.0)
    assert values(out) == [[1.0, -16.0, 1.0]]


def test_presence_and_frequency_penalties():
    logits = mx.array([1.0, 1.0, 1.0])
    counts = mx.array([0.0, 1.0, 3.0])
    out = apply_presence_frequency(logits, counts, presence=0.5, frequency=0.25)
    assert values(out) == [1.0, 1.0 - 0.25 - 0.5, 1.0 - 0.75 - 0.5]


def test_logit_bias_adds_to_the_named_ids():
    out = apply_logit_bias(mx.array([0.0, 1.0, 2.0]), mx.array([2, 0]), mx.array([-100.0, 5.0]))
    assert values(out) == [5.0, 1.0, -98.0]


def test_temperature_scales():
    assert values(apply_temperature(mx.array([1.0, -2.0]), 0.5)) == [2.0, -4.0]


@pytest.mark.parametrize("k, expected", [
    (1, [NEG, 3.0, NEG, NEG]),
    (2, [NEG, 3.0, 2.0, NEG]),
    (0, [1.0, 3.0, 2.0, -1.0]),   # off
    (4, [1.0, 3.0, 2.0, -1.0]),   # k >= V keeps all
    (9, [1.0, 3.0, 2.0, -1.0]),
])
def test_top_k(k, expected):
    assert values(apply_top_k(mx.array([1.0, 3.0, 2.0, -1.0]), k)) == expected


def test_top_k_keeps_ties_with_the_kth():
    assert values(apply_top_k(mx.array([1.0, 2.0, 2.0, 0.0]), 1)) == [NEG, 2.0, 2.0, NEG]


# probabilities 0.5, 0.25, 0.125, 0.125 (log2 spaced logits)
_P = [math.log(0.5), math.log(0.25), math.log(0.125), math.log(0.125)]


@pytest.mark.parametrize("p, kept", [
    (0.4, [0]),           # the best token alone already exceeds p
    (0.5, [0]),           # mass above token 1 is 0.5, not < 0.5
    (0.6, [0, 1]),
    (0.75, [0, 1]),
    (0.8, [0, 1, 2, 3]),  # tokens 2 and 3 tie; both have mass 0.75 or 0.875 above, one of them would be < 0.8
    (1.0, [0, 1, 2, 3]),
])
def test_top_p(p, kept):
    out = values(apply_top_p(mx.array(_P), p))
    got = [i for i, v in enumerate(out) if v != NEG]
    if p == 0.8:  # with a tie at the boundary exactly one of 2, 3 survives
        assert got[:2] == [0, 1] and len(got) == 3
    else:
        assert got == kept
    for i in got:
        assert out[i] == pytest.approx(_P[i])


def test_top_p_batched():
    out = values(apply_top_p(mx.array([[0.0, 10.0, 0.0]]), 0.5))
    assert out == [[NEG, 10.0, NEG]]


@pytest.mark.parametrize("min_p, kept", [
    (0.0, [0, 1, 2, 3]),
    (0.2, [0, 1, 2, 3]),   # 0.125 / 0.5 = 0.25 >= 0.2
    (0.3, [0, 1]),         # 0.25 / 0.5 = 0.5 >= 0.3
    (0.6, [0]),
    (1.0, [0]),
])
def test_min_p(min_p, kept):
    out = values(apply_min_p(mx.array(_P), min_p))
    assert [i for i, v in enumerate(out) if v != NEG] == kept


def test_logprobs_is_float32_log_softmax():
    out = logprobs(mx.array([[0.0, math.log(3.0)]], dtype=mx.bfloat16))
    assert out.dtype == mx.float32
    assert values(out)[0] == pytest.approx([math.log(0.25), math.log(0.75)], abs=1e-2)


def test_top_logprobs_best_first():
    ids, vals = top_logprobs(mx.array([-3.0, -0.5, -2.0, -1.0]), 3)
    assert ids.dtype == mx.int32
    assert values(ids) == [1, 3, 2]
    assert values(vals) == [-0.5, -1.0, -2.0]
    ids, _ = top_logprobs(mx.array([-3.0, -0.5]), 5)
    assert values(ids) == [1, 0]


# -- the sampler ---------------------------------------------------------------------------------------------------


def draw(params: SamplingParams, logits: mx.array, n: int, prompt: list[int] | None = None) -> list[int]:
    sampler = Sampler(params, logits.shape[-1], prompt or [])
    return [sampler(logits).item() for _ in range(n)]


def test_greedy_is_argmax_with_shape_and_dtype():
    sampler = Sampler(SamplingParams(temperature=0.0), 5, [])
    for shape in [(5,), (1, 5)]:
        token = sampler(mx.array([0.1, 0.3, 2.0, -1.0, 1.9]).reshape(shape))
        assert token.shape == (1,) and token.dtype == mx.int32
        assert token.item() == 2


def test_greedy_still_applies_bias_and_penalties():
    logits = mx.array([1.0, 2.0, 1.5])
    assert draw(SamplingParams(temperature=0.0, logit_bias={0: 5.0}), logits, 1) == [0]
    # repetition penalty over the prompt: 2.0 / 2 = 1.0 < 1.5
    assert draw(SamplingParams(temperature=0.0, repetition_penalty=2.0), logits, 1, prompt=[1]) == [2]
    # frequency penalty over generated tokens makes greedy alternate: 2,2 → 1.0 vs 1.5 ...
    assert draw(SamplingParams(temperature=0.0, frequency_penalty=0.6), logits, 3) == [1, 2, 1]


@pytest.mark.parametrize("window, expected", [
    (0, [1, 1, 1, 1]),   # off
    (1, [0, 1, 0, 1]),   # only the last token is penalized
    (2, [0, 1, 1, 0]),   # [1]→0, [1,0]→1 (0.5 < 0.6), [0,1]→1, [1,1]→0
    (64, [0, 1, 1, 1]),  # once both are in the window, 0.6 > 0.5 forever
    (2**32 - 1, [0, 1, 1, 1]),  # the largest uint32 the proto allows: not an int32 slice index (found by fuzzing)
])
def test_repetition_window_counts_prompt_and_generated_tokens(window, expected):
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0, repetition_window=window)
    assert draw(params, mx.array([1.0, 1.2, 0.0]), 4, prompt=[1]) == expected


def test_seeded_sampling_is_reproducible_and_isolated():
    logits = mx.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    params = SamplingParams(temperature=1.0, seed=1234)
    first = draw(params, logits, 50)
    # Other sampling and a changed global seed in between must not matter.
    draw(SamplingParams(seed=99), logits, 17)
    draw(SamplingParams(), logits, 5)
    mx.random.seed(7)
    mx.random.uniform(shape=(3,))
    assert draw(params, logits, 50) == first
    assert draw(SamplingParams(temperature=1.0, seed=1235), logits, 50) != first


def test_interleaved_samplers_do_not_disturb_each_other():
    logits = mx.array([0.0, 0.5, 1.0, 1.5])
    alone = draw(SamplingParams(seed=5), logits, 20)
    a, b = Sampler(SamplingParams(seed=5), 4, []), Sampler(SamplingParams(seed=6), 4, [])
    together = []
    for _ in range(20):
        together.append(a(logits).item())
        b(logits)
    assert together == alone


def test_unseeded_samplers_differ():
    s1, s2 = Sampler(SamplingParams(), 4, []), Sampler(SamplingParams(), 4, [])
    assert s1.seed != s2.seed


def test_top_k_two_only_ever_yields_the_two_best():
    logits = mx.array([0.0, 2.0, 1.9, 1.8, 0.5])
    counts = Counter(draw(SamplingParams(top_k=2, seed=0), logits, 300))
    assert set(counts) == {1, 2}


def test_sampling_follows_the_distribution():
    logits = mx.array([math.log(0.7), math.log(0.2), math.log(0.1)])
    counts = Counter(draw(SamplingParams(seed=3), logits, 2000))
    assert counts[0] / 2000 == pytest.approx(0.7, abs=0.05)
    assert counts[2] / 2000 == pytest.approx(0.1, abs=0.03)


def test_low_temperature_concentrates_and_min_p_top_p_prune():
    logits = mx.array(_P)
    assert set(draw(SamplingParams(temperature=0.05, seed=1), logits, 100)) == {0}
    assert set(draw(SamplingParams(min_p=0.3, seed=1), logits, 200)) == {0, 1}
    assert set(draw(SamplingParams(top_p=0.6, seed=1), logits, 200)) == {0, 1}


def test_sampler_never_syncs(monkeypatch):
    """Everything __call__ returns or keeps must still be lazy; a sync would break the decoder's pipelining."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the sampler synced with the device")
    params = SamplingParams(temperature=0.7, top_k=3, top_p=0.9, min_p=0.05, repetition_penalty=1.2,
                            presence_penalty=0.3, frequency_penalty=0.2, logit_bias={1: 2.0}, seed=1)
    sampler = Sampler(params, 6, [1, 2, 3])
    monkeypatch.setattr(mx, "eval", forbidden)
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(mx.array, name, forbidden)
    token = mx.array([0], dtype=mx.int32)
    for _ in range(3):
        token = sampler(mx.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) + token.astype(mx.float32))
    monkeypatch.undo()
    assert 0 <= token.item() < 6


# -- validation ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("temperature", math.nan), ("temperature", math.inf), ("temperature", -0.1),
    ("top_k", -1), ("top_k", 1.5),
    ("top_p", 0.0), ("top_p", 1.1), ("top_p", math.nan),
    ("min_p", -0.1), ("min_p", 1.5), ("min_p", math.inf),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("repetition_penalty", math.nan),
    ("repetition_penalty", math.inf),
    ("repetition_window", -1),
    ("presence_penalty", 2.5), ("presence_penalty", -2.1), ("presence_penalty", math.nan),
    ("frequency_penalty", math.inf), ("frequency_penalty", -3.0),
    ("seed", -1), ("seed", 2**64),
])
def test_validation_rejects_naming_the_field(field, value):
    with pytest.raises(InvalidRequest, match=field):
        SamplingParams(**{field: value}).validate(100)


@pytest.mark.parametrize("bias, needle", [
    ({100: 1.0}, "logit_bias"), ({-1: 1.0}, "logit_bias"),
    ({3: math.nan}, r"logit_bias\[3\]"), ({3: math.inf}, r"logit_bias\[3\]"), ({3: 101.0}, r"logit_bias\[3\]"),
])
def test_validation_of_logit_bias(bias, needle):
    with pytest.raises(InvalidRequest, match=needle):
        SamplingParams(logit_bias=bias).validate(100)


def test_validation_accepts_edges():
    SamplingParams().validate(10)
    SamplingParams(temperature=0.0, top_k=10**6, top_p=1.0, min_p=1.0, repetition_penalty=0.5,
                   repetition_window=0, presence_penalty=-2.0, frequency_penalty=2.0,
                   logit_bias={0: -100.0, 9: 100.0}, seed=2**64 - 1).validate(10)


def test_params_are_immutable_and_copy_logit_bias():
    bias = {1: 1.0}
    params = SamplingParams(logit_bias=bias)
    bias[2] = 3.0
    assert dict(params.logit_bias) == {1: 1.0}
    with pytest.raises(TypeError):
        params.logit_bias[5] = 1.0  # type: ignore[index]
    hash(params)
