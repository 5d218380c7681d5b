"""Checks shared by the parity tests of model folders (tests/models) and of GGUF files (tests/gguf)."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxd.loading.loader import load_model
from tests.helpers.parity import PARITY


def greedy_with_cache(model, input_ids: mx.array, count: int) -> list[int]:
    """`count` greedy tokens after input_ids [1, T], decoding one token at a time through the KV cache."""
    cache = model.make_cache()
    token = model(input_ids, cache)[:, -1].argmax(axis=-1)
    got = [token.item()]
    while len(got) < count:
        token = model(token[:, None], cache)[:, -1].argmax(axis=-1)
        got.append(token.item())
    return got


def prefill_in_chunks(model, tokens: mx.array, chunk: int) -> tuple[mx.array, list]:
    """The logits of tokens [1, T] computed `chunk` tokens at a time through a fresh cache, and that cache."""
    cache = model.make_cache()
    pieces = []
    for start in range(0, tokens.shape[1], chunk):
        pieces.append(model(tokens[:, start : start + chunk], cache))
        mx.eval(pieces[-1], [c.state for c in cache])
    return mx.concatenate(pieces, axis=1), cache


def max_decode_error(model, tokens: mx.array, continuation: mx.array) -> float:
    """The largest difference between the logits of each token of `continuation` decoded one at a time through the
    cache (after tokens [1, T] prefilled in chunks of 16) and those of a full forward pass over the sequence so far."""
    sequence = mx.concatenate([tokens, continuation[None, :]], axis=1)
    _, cache = prefill_in_chunks(model, tokens, 16)
    worst = 0.0
    for pos in range(tokens.shape[1], sequence.shape[1]):
        step = model(sequence[:, pos : pos + 1], cache)[0, -1]
        full = model(sequence[:, : pos + 1])[0, -1]
        worst = max(worst, mx.abs(step - full).max().item())
    return worst


def assert_matches_transformers(model, logits: mx.array, expected: dict[str, mx.array], tol: float) -> None:
    """The one-pass `logits` of expected["input_ids"] within `tol` of transformers', and 16 greedy tokens decoded
    through the cache the ids transformers chose."""
    assert mx.abs(logits[0] - expected["logits"]).max().item() < tol
    assert greedy_with_cache(model, expected["input_ids"], 16) == expected["greedy_ids"].tolist()


def assert_chunks_and_steps_match(model, tokens: mx.array, logits: mx.array, continuation: mx.array, chunk: int,
                                  tol: float) -> None:
    """The one-pass `logits` of tokens [1, T] again when prefilled `chunk` tokens at a time, and `continuation`
    decoded step by step as in full passes: both within `tol`."""
    assert mx.abs(prefill_in_chunks(model, tokens, chunk)[0] - logits).max().item() < tol
    assert max_decode_error(model, tokens, continuation) < tol


def assert_computes_with_stored_values(logits: mx.array, fixture: str, stored: dict[str, mx.array],
                                       tokens: mx.array, tol: float) -> None:
    """A quantized file's `logits` against the fixture folder's model (float32) holding the values the file stores
    (Hugging Face names), so that only the computing differs, not the rounding of the values."""
    reference = load_model(PARITY / fixture, dtype="float32").model
    reference.load_weights(list(reference.sanitize(dict(stored)).items()), strict=False)
    assert mx.abs(logits - reference(tokens)).max().item() < tol


def expected_results(fixture: str) -> dict[str, mx.array]:
    """transformers' float32 results for the parity fixture (expected.safetensors)."""
    return mx.load(str(PARITY / fixture / "expected.safetensors"))


def files_written_once(tmp_path_factory, write):
    """Factory (fixture, qtype="F32") -> (path, the values its quantized tensors hold), each file written once by
    write(fixture, path, qtype) under a pytest temporary folder."""
    files: dict[tuple[str, str], tuple] = {}

    def get(fixture: str, qtype: str = "F32"):
        if (fixture, qtype) not in files:
            path = tmp_path_factory.mktemp("gguf") / f"{fixture}-{qtype}.gguf"
            files[fixture, qtype] = path, write(fixture, path, qtype)
        return files[fixture, qtype]

    return get


def assert_file_parity(model, fixture: str, qtype: str, stored: dict[str, mx.array], expected: dict[str, mx.array],
                       logit_tol: float, self_tol: float) -> None:
    """A parity fixture's file loaded as `model`: F32 against transformers, a quantized `qtype` against the
    folder's model holding the values the file stores; either way chunks of 7 and steps as in one pass."""
    tokens = expected["input_ids"]
    logits = model(tokens)
    if qtype == "F32":
        assert_matches_transformers(model, logits, expected, logit_tol)
    else:
        assert stored  # some matrices are quantized
        assert_computes_with_stored_values(logits, fixture, stored, tokens, logit_tol)
    assert_chunks_and_steps_match(model, tokens, logits, expected["greedy_ids"], 7, self_tol)


def assert_same_args(loaded, folder, names: tuple[str, ...], eps: str) -> None:
    """A file's model args (`loaded`) as the fixture folder's: `names` exactly, the norm's `eps` as the float32
    the file holds."""
    for name in names:
        assert getattr(loaded, name) == getattr(folder, name), name
    assert getattr(loaded, eps) == pytest.approx(getattr(folder, eps))


def gated_delta_state_errors(model, input_ids, chunk: int, expected_state) -> tuple[list[int], float, float]:
    """After prefilling `input_ids` in chunks: the recurrent layers' indices and the largest differences of their
    conv and recurrent states from transformers' (`expected_state`: expected_state.safetensors, loaded). mlxd holds
    a Gated DeltaNet state [Hv, Dv, Dk]; transformers' is [Hv, Dk, Dv]."""
    from mlxd.models.recurrent_cache import RecurrentCache

    _, cache = prefill_in_chunks(model, input_ids, chunk)
    recurrent = [i for i, c in enumerate(cache) if isinstance(c, RecurrentCache)]
    conv = max(mx.abs(cache[i].conv_state[0] - expected_state[f"layers.{i}.conv_state"]).max().item()
               for i in recurrent)
    state = max(mx.abs(cache[i].recurrent_state[0].swapaxes(-1, -2)
                       - expected_state[f"layers.{i}.recurrent_state"]).max().item() for i in recurrent)
    return recurrent, conv, state
