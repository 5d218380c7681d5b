"""StreamingDetokenizer against real tokenizers: the byte-level BPE fixture, and a SentencePiece-style one
with byte fallback and a leading-space Strip decoder (built here, as Llama 2 / Gemma tokenizer.json are)."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

from mlxd.generation.detokenizer import StreamingDetokenizer
from mlxd.loading.tokenizer import load_tokenizer

FIXTURE = Path(__file__).parent.parent / "fixtures" / "tokenizer"
BYTE_LEVEL = load_tokenizer(FIXTURE)

TEXTS = [
    "Hello, world! 😀👍🏽 family: 👨‍👩‍👧",
    "中文测试，日本語のテキスト、한국어",
    "e\u0301 a\u0308 n\u0303 — combining marks",
    "mixed: 1 + 2 = 3 ✓ ∑ λ <eos> tail",
    " leading and trailing spaces  ",
]


def stream(decode, ids, **kwargs) -> tuple[list[str], str]:
    detok = StreamingDetokenizer(decode, **kwargs)
    deltas = [detok.add(i) for i in ids]
    return deltas, detok.finish()


def sp_tokenizer() -> Tokenizer:
    """Llama-2 layout: '▁' for spaces, <0xNN> byte pieces, decoder Replace → ByteFallback → Fuse → Strip."""
    pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "x", "中", "é",
              "▁h", "▁he", "ll", "▁hell", "▁hello", "▁w", "▁wo", "▁wor", "▁worl", "▁world"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    vocab.update({p: 259 + i for i, p in enumerate(pieces)})
    merges = [("▁", "h"), ("▁h", "e"), ("l", "l"), ("▁he", "ll"), ("▁hell", "o"),
              ("▁", "w"), ("▁w", "o"), ("▁wo", "r"), ("▁wor", "l"), ("▁worl", "d")]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    return tok


SP = sp_tokenizer()
SP_BYTES = frozenset(range(3, 259))


def sp_decode(ids: list[int]) -> str:
    return SP.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_texts_round_trip_without_broken_characters(text):
    ids = BYTE_LEVEL.encode(text, add_special_tokens=False)
    deltas, rest = stream(BYTE_LEVEL.decode, ids)
    assert "".join(deltas) + rest == BYTE_LEVEL.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)
    assert len(ids) > len(text.encode()) // 3  # the fixture's small vocabulary really splits characters


def test_emoji_is_emitted_whole_once_complete():
    ids = BYTE_LEVEL.encode("😀", add_special_tokens=False)
    assert len(ids) == 4
    deltas, rest = stream(BYTE_LEVEL.decode, ids)
    assert deltas == ["", "", "", "😀"] and rest == ""


def test_combining_mark_follows_its_base():
    deltas, rest = stream(BYTE_LEVEL.decode, BYTE_LEVEL.encode("e\u0301", add_special_tokens=False))
    assert deltas[0] == "e" and "".join(deltas) + rest == "e\u0301"


@pytest.mark.parametrize("text", TEXTS + ["hello world", "hello  world x", "中中中文字"])
def test_sentencepiece_leading_space_and_byte_fallback(text):
    ids = SP.encode(text).ids
    deltas, rest = stream(sp_decode, ids, held_ids=SP_BYTES)
    assert "".join(deltas) + rest == sp_decode(ids)
    assert not any("\ufffd" in d for d in deltas)


def test_sentencepiece_keeps_the_space_of_a_word_after_the_first():
    ids = SP.encode("hello world").ids
    assert [SP.id_to_token(i) for i in ids] == ["▁hello", "▁world"]
    assert stream(sp_decode, ids) == (["hello", " world"], "")


def test_byte_fallback_run_is_held_until_it_ends():
    # A valid character followed by a stray continuation byte turns the whole run into U+FFFD per byte.
    ids = [SP.token_to_id(f"<0x{b:02X}>") for b in "中".encode()] + [SP.token_to_id("<0x80>"), SP.token_to_id("x")]
    deltas, rest = stream(sp_decode, ids, held_ids=SP_BYTES)
    assert "".join(deltas) + rest == sp_decode(ids) == "\ufffd" * 4 + "x"


def test_a_replacement_character_the_decode_produces_is_emitted():
    stray = BYTE_LEVEL.encode("é", add_special_tokens=False)[1:]  # a lone continuation byte
    ids = stray + BYTE_LEVEL.encode("ok", add_special_tokens=False)
    deltas, rest = stream(BYTE_LEVEL.decode, ids)
    assert "".join(deltas) + rest == "\ufffdok"
    assert "\ufffd" in "".join(deltas)


def test_garbage_is_released_in_bounded_windows():
    stray = BYTE_LEVEL.encode("é", add_special_tokens=False)[1]
    seen: list[int] = []

    def decode(ids: list[int]) -> str:
        seen.append(len(ids))
        return BYTE_LEVEL.decode(ids)

    deltas, rest = stream(decode, [stray] * 500)
    assert "".join(deltas) + rest == "\ufffd" * 500
    assert max(seen[:-1]) <= 24  # never the whole sequence (finish decodes only the last window)


def test_cost_per_token_is_bounded():
    ids = BYTE_LEVEL.encode("😀 中文 hello " * 200, add_special_tokens=False)
    seen: list[int] = []

    def decode(window: list[int]) -> str:
        seen.append(len(window))
        return BYTE_LEVEL.decode(window)

    deltas, rest = stream(decode, ids)
    assert "".join(deltas) + rest == BYTE_LEVEL.decode(ids)
    assert max(seen) <= 8 and len(seen) <= 3 * len(ids)


def test_skipped_special_token_as_context_keeps_the_next_space():
    eos = SP.token_to_id("</s>")
    ids = SP.encode("hello").ids + [eos] + SP.encode("world").ids

    def decode(window: list[int]) -> str:
        return SP.decode(window, skip_special_tokens=True)

    deltas, rest = stream(decode, ids)
    assert "".join(deltas) + rest == decode(ids) == "hello world"


def test_finish_resets():
    detok = StreamingDetokenizer(BYTE_LEVEL.decode)
    first = BYTE_LEVEL.encode("é", add_special_tokens=False)
    assert detok.add(first[0]) == ""
    assert detok.finish() == "\ufffd"
    assert detok.finish() == ""
    assert detok.add(BYTE_LEVEL.encode("a", add_special_tokens=False)[0]) == "a"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, BYTE_LEVEL.vocab_size - 1), max_size=60))
def test_property_byte_level_concatenation_is_exact(ids):
    deltas, rest = stream(BYTE_LEVEL.decode, ids)
    full = BYTE_LEVEL.decode(ids)
    assert "".join(deltas) + rest == full
    # A delta may hold U+FFFD only where the full decode has one at that place.
    emitted = ""
    for delta in deltas:
        for offset, ch in enumerate(delta):
            if ch == "\ufffd":
                assert full[len(emitted) + offset] == "\ufffd"
        emitted += delta


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, SP.get_vocab_size() - 1), max_size=15))
def test_property_sentencepiece_concatenation_is_exact(ids):
    # Byte runs shorter than the pending limit are exact; longer runs of invalid bytes are released early.
    deltas, rest = stream(sp_decode, ids, held_ids=SP_BYTES)
    assert "".join(deltas) + rest == sp_decode(ids)
