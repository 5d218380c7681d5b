"""tokenizer.ggml.pre regexes against the pre-tokenizers the models' own tokenizer.json files declare.

The references are built offline from the published regexes (Llama 3, Qwen2, Qwen3.5, Mistral's Tekken,
GPT-4o / Llama 4) and the `tokenizers` built-ins GPT-2 and SmolLM use; both sides end in the byte-level
mapping, so the pieces compare as the BPE model would see them.
"""

from __future__ import annotations

import pytest
from tokenizers import Regex
from tokenizers import pre_tokenizers as pt

from mlxd.loading.gguf.tokenizer import PRE_TOKENIZERS

_CASELESS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_CASED = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+SUFFIX"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*SUFFIX")
# tokenizer.json pre_tokenizer Split patterns, as published.
PUBLISHED = {
    "llama-bpe": _CASELESS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": _CASELESS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen35": _CASELESS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
                          r"|\s+(?!\S)|\s+",
    "tekken": _CASED.replace("SUFFIX", "") + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "gpt-4o": _CASED.replace("SUFFIX", _CASELESS + "?") + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
                                                        r"|\s+(?!\S)|\s+",
}
_BYTES = pt.ByteLevel(add_prefix_space=False, use_regex=False)
REFERENCES = {
    "gpt-2": pt.ByteLevel(add_prefix_space=False, use_regex=True),
    "smollm": pt.Sequence([pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False, use_regex=True)]),
    **{name: pt.Sequence([pt.Split(Regex(regex), behavior="isolated"), _BYTES]) for name, regex in PUBLISHED.items()},
}
TRICKY = [
    "Hello world",
    "I'm can't WE'RE they'LL it'S",  # contractions in both cases
    "1234567 and 12.5% of 3,000,000",  # digit runs: one by one, or three at a time
    "日本語のテキスト 中文，标点。",  # CJK and full-width punctuation
    "  multiple   spaces\n\n\ttabs  \n",  # whitespace runs
    "don't\r\nstop\r\n\r\n",
    "ÉCOLE école ÉcoleNormale McDonald's iPhone HTTPServer",  # case changes inside words
    "naïve cafe\u0301 re\u0301sume\u0301",  # combining accents
    "x=1+2;  // comment\n\tif(a<b){return}",
    "😀 emoji 👍🏽!",
    "٣٤٥ ½ ⅷ",  # non-ASCII numbers
    "path/to/file.py 'quoted' \"double\"",
    "end with space ",
    "ΑΒΓ αβγ straße İstanbul",
]


def _ours(name: str) -> pt.PreTokenizer:
    """The pre-tokenizer bpe_tokenizer builds for `name`."""
    steps = [pt.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZERS[name].regexes]
    return pt.Sequence([*steps, _BYTES])


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("text", TRICKY)
def test_splits_equal_the_models_own(name, text):
    assert _ours(name).pre_tokenize_str(text) == REFERENCES[name].pre_tokenize_str(text)


@pytest.mark.parametrize(
    ("alias", "name"),
    [("llama3", "llama-bpe"), ("deepseek-r1-qwen", "qwen2"), ("llama4", "gpt-4o"), ("starcoder", "smollm"),
     ("olmo", "gpt-2")],
)
def test_aliases_split_as_llama_cpp_groups_them(alias, name):
    assert PRE_TOKENIZERS[alias].regexes == PRE_TOKENIZERS[name].regexes


def test_llama_cpp_flags():
    # Words that are whole tokens skip merging, and BOS is added unless the file says otherwise.
    assert PRE_TOKENIZERS["llama-bpe"].ignore_merges and PRE_TOKENIZERS["llama-bpe"].add_bos
    assert PRE_TOKENIZERS["tekken"].ignore_merges and PRE_TOKENIZERS["tekken"].add_bos
    assert not PRE_TOKENIZERS["dbrx"].ignore_merges and not PRE_TOKENIZERS["qwen2"].add_bos
