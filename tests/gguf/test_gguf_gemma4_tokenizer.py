"""Gemma 4's GGUF tokenizer (`tokenizer.ggml.model` = gemma4) against a Gemma-style Hugging Face tokenizer.

The reference is built here with the `tokenizers` library as transformers' GemmaTokenizer builds Gemma 4's: a BPE
with byte fallback over raw UTF-8, spaces replaced by "▁", no prefix space; special tokens (<bos>, <eos>, the
<|turn>/<turn|> markers, <|"|>, the tool and channel markers) and the runs of newlines as added tokens, all inside
the model's vocabulary, as in the published tokenizer.json. Its merges are trained on a few lines (one of them with
newlines, so merges across newlines exist that the added newline tokens must keep from applying).

The GGUF is written as llama.cpp's converter writes Gemma 4 (Gemma4Model.set_vocab over gguf's LlamaHfVocab and
SpecialVocab): every id with its text, score -1000, type BYTE for <0xNN>, CONTROL for special tokens, USER_DEFINED
for the markers it keeps visible, NORMAL for the rest (the newline runs included); merges as "a b"; the special
ids; add_space_prefix false, add_bos true; the chat templates.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers
from gguf import GGUFWriter, TokenType
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, trainers

from mlxd.loading.gguf import load_gguf_tokenizer
from mlxd.loading.tokenizer import Tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! Hello there, how are you today?",
    "def hello(name):\n    return f'hello {name}'\n\n\nprint(hello('you'))",
    "Tokenizers split text into pieces; the pieces become ids.",
    "A model reads the ids and writes the next one, then the next.",
]
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
MARKERS = ["<|turn>", "<turn|>", '<|"|>', "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>",
           "<|channel>", "<channel|>"]
# The markers llama.cpp's converter writes as USER_DEFINED so that a chat parser sees them in the output.
VISIBLE = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>'}
NEWLINES = ["\n", "\n\n", "\n\n\n"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|turn>{{ m['role'] }}\n{{ m['content'] }}<turn|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|turn>model\n{% endif %}")
TOOL_TEMPLATE = "{{ bos_token }}<|turn>system\n{{ tools | length }} tools<turn|>\n" + TEMPLATE.removeprefix(
    "{{ bos_token }}")
TEXTS = [
    "Hello world!",
    " leading space",
    "trailing spaces  ",
    "multiple   spaces and\ttabs\t\tin a row",
    "one\nnewline",
    "two\n\nnewlines, three\n\n\nand five\n\n\n\n\nof them",
    "\nstarts and ends with newlines\n",
    "def hello(name):\n    return f'hello {name}'",
    "héllo wörld, naïve café",  # characters outside the vocabulary: their bytes
    "emoji 😀 and 日本語",
    '<|turn>user\nSay <|"|>hi<|"|><turn|>\n<|turn>model\n',
    "<|tool_call>call:f{}<tool_call|><|tool_response>",
    "text with <eos> and <bos> inside",
    "",
]


def _gemma_pipeline(tok: tokenizers.Tokenizer) -> None:
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])


def _hf_gemma_tokenizer() -> tokenizers.Tokenizer:
    trained = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    _gemma_pipeline(trained)
    trained.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, show_progress=False))
    learned = json.loads(trained.to_str())["model"]
    vocab = {t: i for i, t in enumerate(SPECIAL + MARKERS + NEWLINES + BYTES)}
    for text in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(text, len(vocab))
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in learned["merges"]],
                                          unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    _gemma_pipeline(tok)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL + MARKERS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in NEWLINES])
    assert tok.get_vocab_size(with_added_tokens=True) == len(vocab), "every added token is in the vocabulary"
    return tok


def _write_gguf(path: Path, hf: tokenizers.Tokenizer, *, add_bos: bool = True) -> None:
    """Tokenizer metadata as llama.cpp's converter writes Gemma 4's (a vocabulary-only file)."""
    texts = {i: t for t, i in hf.get_vocab(with_added_tokens=True).items()}
    special = {i for i, t in hf.get_added_tokens_decoder().items() if t.special}
    tokens = [texts[i] for i in range(len(texts))]
    types = [TokenType.BYTE if t in BYTES else TokenType.USER_DEFINED if t in VISIBLE
             else TokenType.CONTROL if i in special else TokenType.NORMAL for i, t in enumerate(tokens)]
    w = GGUFWriter(str(path), "gemma4")
    w.add_tokenizer_model("gemma4")
    w.add_token_list(tokens)
    w.add_token_scores([-1000.0] * len(tokens))
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) for m in json.loads(hf.to_str())["model"]["merges"]])
    for name, text in (("bos", "<bos>"), ("eos", "<eos>"), ("unk", "<unk>"), ("pad", "<pad>")):
        getattr(w, f"add_{name}_token_id")(tokens.index(text))
    w.add_chat_template([{"name": "default", "template": TEMPLATE}, {"name": "tool_use", "template": TOOL_TEMPLATE}])
    w.add_add_space_prefix(False)
    w.add_add_bos_token(add_bos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def hf() -> tokenizers.Tokenizer:
    return _hf_gemma_tokenizer()


@pytest.fixture(scope="module")
def ours(hf, tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("gemma4") / "vocab.gguf"
    _write_gguf(path, hf)
    return load_gguf_tokenizer(path)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_equals_hugging_face(ours, hf, text):
    want = hf.encode(text, add_special_tokens=False).ids
    assert ours.encode(text, add_special_tokens=False) == want
    assert ours.decode(want) == hf.decode(want, skip_special_tokens=False) == text


def test_merges_do_not_cross_newlines(ours, hf):
    """The trained merges join "\\n" with what follows; the newline runs are whole tokens first."""
    merges = json.loads(hf.to_str())["model"]["merges"]
    assert any("\n" in a + b and (a + b).strip("\n") for a, b in merges)
    ids = ours.encode("x\n\n\n\n\ny", add_special_tokens=False)
    assert [ours.id_to_token(i) for i in ids] == ["x", "\n\n\n", "\n\n", "y"]


def test_special_tokens(ours):
    bos, eos, turn_end, quote, tool_response = (ours.token_to_id(t) for t in
                                                ("<bos>", "<eos>", "<turn|>", '<|"|>', "<|tool_response>"))
    assert ours.bos_token_id == bos == 2
    assert ours.encode("Hello") == [bos, *ours.encode("Hello", add_special_tokens=False)]
    assert ours.encode("<bos>Hello") == ours.encode("Hello")  # never a second BOS
    # llama.cpp ends generation on <eos>, <turn|> and <|tool_response> (the model waits for the tool's answer).
    assert ours.eos_token_ids == [eos, turn_end, tool_response]
    # Control tokens are text unless special tokens are parsed; the visible markers are tokens either way.
    assert turn_end not in ours.encode("<turn|>", add_special_tokens=False, parse_special=False)
    assert ours.encode('<|"|>', add_special_tokens=False, parse_special=False) == [quote]
    ids = ours.encode('<|turn>model\n<|"|>ok<|"|><turn|>', add_special_tokens=False)
    assert ours.decode(ids, skip_special_tokens=True) == 'model\n<|"|>ok<|"|>'
    assert len(ours.byte_fallback_ids) == 256


def test_bos_is_added_even_where_the_file_says_not(hf, tmp_path):
    """llama.cpp's workaround for Gemma 4 files with add_bos_token false: BOS all the same."""
    _write_gguf(tmp_path / "vocab.gguf", hf, add_bos=False)
    tok = load_gguf_tokenizer(tmp_path / "vocab.gguf")
    assert tok.encode("Hello")[0] == tok.bos_token_id == 2


def test_chat_templates_load_from_metadata(ours, hf):
    messages = [{"role": "user", "content": "Hello world!"}]
    prompt = ours.apply_chat_template(messages)
    assert prompt == "<bos><|turn>user\nHello world!<turn|>\n<|turn>model\n"
    ids = ours.encode(prompt, add_special_tokens=False)
    assert ids == hf.encode(prompt, add_special_tokens=False).ids
    assert ids[:3] == [ours.token_to_id(t) for t in ("<bos>", "<|turn>", "u")]
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert ours.apply_chat_template(messages, tools=tools).startswith("<bos><|turn>system\n1 tools<turn|>\n")
