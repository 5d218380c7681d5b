"""The header reader against the `gguf` package's own reader; tokenizer building from metadata."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader

from mlxd.errors import ModelLoadError, Unsupported
from mlxd.loading.gguf.reader import read_gguf
from mlxd.loading.gguf.tokenizer import PRE_TOKENIZERS, build_tokenizer, eog_token_ids, score_merges
from tests.gguf.tiny_gguf import write_tiny_llama


def test_reader_agrees_with_gguf_package(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path)
    ours, theirs = read_gguf(path), GGUFReader(path)
    assert ours.metadata == {k: f.contents() for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors):
        assert mine.type_name == ref.tensor_type.name
        assert mine.shape == tuple(int(d) for d in reversed(ref.shape))
        np.testing.assert_array_equal(mine.raw, np.asarray(ref.data).view(np.uint8).reshape(-1))


def test_truncated_file_is_reported(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_llama(path)
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelLoadError, match="runs past the end of the file"):
        read_gguf(tmp_path / "cut.gguf")
    (tmp_path / "head.gguf").write_bytes(data[:200])
    with pytest.raises(ModelLoadError, match="truncated GGUF header"):
        read_gguf(tmp_path / "head.gguf")


@pytest.mark.real_model
def test_smollm2_metadata_is_read(smollm2_file):
    assert smollm2_file.metadata["general.architecture"] == "llama"
    assert len(smollm2_file.metadata["tokenizer.ggml.tokens"]) == 49152
    assert len(smollm2_file.tensors) == 272


# A vocabulary of single characters and a few merges, byte-level ("Ġ" is the space byte).
BYTES = ["<s>", "</s>", "<|im_end|>", "h", "i", "Ġ", "hi", "Ġhi", "1", "2"]
META = {
    "tokenizer.ggml.model": "gpt2",
    "tokenizer.ggml.pre": "smollm",
    "tokenizer.ggml.tokens": BYTES,
    "tokenizer.ggml.token_type": [3, 3, 4, 1, 1, 1, 1, 1, 1, 1],
    "tokenizer.ggml.merges": ["h i", "Ġ hi"],
    "tokenizer.ggml.bos_token_id": 0,
    "tokenizer.ggml.eos_token_id": 1,
}


def test_small_bpe_tokenizer():
    tok = build_tokenizer(META)
    assert tok.encode("hi hi") == [6, 7]
    assert tok.encode("12") == [8, 9]  # smollm splits digits one by one
    assert tok.encode("hi</s>") == [6, 1]
    assert tok.encode("hi</s>", parse_special=False) != [6, 1]
    assert tok.encode("hi<|im_end|>", parse_special=False) == [6, 2]  # user-defined tokens always match
    assert tok.decode([6, 7]) == "hi hi"
    assert not tok.has_chat_template


def test_add_bos_default_and_override():
    assert build_tokenizer({**META, "tokenizer.ggml.pre": "llama-bpe"}).encode("hi") == [0, 6]
    assert build_tokenizer({**META, "tokenizer.ggml.add_bos_token": True}).encode("hi") == [0, 6]
    assert build_tokenizer(META).encode("hi") == [6]


def test_unknown_or_missing_pre_tokenizer_falls_back_to_llama_cpps_default(caplog):
    tok = build_tokenizer({**META, "tokenizer.ggml.pre": "something-new"})
    assert tok.encode("hi hi") == [6, 7]
    assert "GGUF pre-tokenizer 'something-new' is not one mlxd knows" in caplog.text
    caplog.clear()
    build_tokenizer({k: v for k, v in META.items() if k != "tokenizer.ggml.pre"})
    assert "names no tokenizer.ggml.pre" in caplog.text
    assert "smollm" in PRE_TOKENIZERS


def test_unsupported_tokenizer_model_is_named():
    with pytest.raises(ModelLoadError, match="unsupported GGUF tokenizer model 'rwkv'"):
        build_tokenizer({**META, "tokenizer.ggml.model": "rwkv"})


def test_eog_ids():
    assert eog_token_ids(META) == [1, 2]  # eos, then <|im_end|> by its text
    assert eog_token_ids({**META, "tokenizer.ggml.eom_token_id": 8}) == [1, 8, 2]
    assert eog_token_ids({**META, "tokenizer.ggml.tokens": ["<s>", "</s>", "x", *BYTES[3:]]}) == [1]


def test_harmony_message_end_is_no_end_of_generation():
    """gpt-oss's <|end|> closes a message, not the turn, where <|return|> and <|call|> exist (llama.cpp's rule)."""
    harmony = ["<|return|>", "<|end|>", "<|call|>", "<|endoftext|>"]
    assert eog_token_ids({**META, "tokenizer.ggml.tokens": harmony, "tokenizer.ggml.eos_token_id": 0}) == [0, 2, 3]
    chat = ["<|end|>", "<|endoftext|>", "x"]  # Phi-3's <|end|> does end the turn
    assert eog_token_ids({**META, "tokenizer.ggml.tokens": chat, "tokenizer.ggml.eos_token_id": 1}) == [1, 0]


# A SentencePiece vocabulary: "▁" is the space, pieces merge by score, <0xNN> are byte-fallback tokens.
SPM = ["<unk>", "<s>", "</s>", "<start_of_turn>", "\n", "<0xC3>", "<0xA9>", "▁", "h", "i", "hi", "▁hi",
       "a", "b", "c", "ab", "bc"]
SPM_META = {
    "tokenizer.ggml.model": "llama",
    "tokenizer.ggml.tokens": SPM,
    "tokenizer.ggml.scores": [0.0] * 7 + [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -12.0, -10.0],
    "tokenizer.ggml.token_type": [2, 3, 3, 3, 4, 6, 6] + [1] * 10,
    "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2,
    "tokenizer.ggml.unknown_token_id": 0,
    "tokenizer.ggml.add_space_prefix": False,
}


@pytest.mark.parametrize(
    ("tokens", "scores", "merges"),
    [
        (["a", "b", "ab"], [0, 0, -1], [("a", "b")]),
        # The best-scoring result merges first; one result reachable two ways gives two merges.
        (["a", "b", "c", "ab", "bc", "abc"], [0, 0, 0, -2, -1, -3], [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]),
        (["a", "b", "abc"], [0, 0, -1], []),  # "c" is no token, so "abc" is no merge
        (["x", "xx", "xxx"], [0, -1, -1], [("x", "x"), ("x", "xx"), ("xx", "x")]),  # ties: lower id first
    ],
)
def test_score_merges(tokens, scores, merges):
    assert score_merges(tokens, scores) == merges


@pytest.mark.parametrize(
    ("changes", "text", "ids", "decoded"),
    [
        ({}, "abc", [12, 16], "abc"),  # "bc" outscores "ab", so it merges first
        ({}, "ab", [15], "ab"),
        ({}, "hi hi", [10, 11], "hi hi"),
        ({}, "hi\nhi", [10, 4, 10], "hi\nhi"),  # user-defined tokens are cut out first
        ({}, "é", [5, 6], "é"),  # not in the vocabulary: its UTF-8 bytes
        ({}, "<start_of_turn>hi", [3, 10], "<start_of_turn>hi"),
        ({"tokenizer.ggml.add_space_prefix": True}, "hi hi", [11, 11], "hi hi"),
        # llama.cpp puts the space before every stretch of text, also after a token matched as text; decoding
        # drops only the first one.
        ({"tokenizer.ggml.add_space_prefix": True}, "<start_of_turn>hi", [3, 11], "<start_of_turn> hi"),
    ],
)
def test_small_spm_tokenizer(changes, text, ids, decoded):
    tok = build_tokenizer({**SPM_META, **changes})
    assert tok.encode(text, add_special_tokens=False) == ids
    assert tok.decode(ids) == decoded


def test_spm_special_tokens_and_bytes():
    tok = build_tokenizer(SPM_META)
    assert tok.encode("hi") == [1, 10]  # llama.cpp adds BOS to SentencePiece vocabularies by default
    assert build_tokenizer({**SPM_META, "tokenizer.ggml.add_bos_token": False}).encode("hi") == [10]
    assert 3 not in tok.encode("<start_of_turn>", parse_special=False)
    assert tok.byte_fallback_ids == frozenset({5, 6})  # the engine's streaming detokenizer waits on these
    assert tok.eos_token_ids == [2]
    assert not tok.has_chat_template


def test_chat_template_comes_from_metadata():
    template = "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['content'] }}\n{% endfor %}"
    tok = build_tokenizer({**SPM_META, "tokenizer.chat_template": template})
    assert tok.has_chat_template
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<s><start_of_turn>hi\n"
    with pytest.raises(Unsupported, match="no chat template"):
        build_tokenizer(SPM_META).apply_chat_template([{"role": "user", "content": "hi"}])
