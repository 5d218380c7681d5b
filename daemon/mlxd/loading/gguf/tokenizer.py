"""The tokenizer a GGUF file carries (`tokenizer.ggml.*`), rebuilt as a Hugging Face `tokenizers` object.

It behaves as llama.cpp's tokenizer does, since that is the reference GGUF models were checked against:
pre-tokenizer regexes by `tokenizer.ggml.pre` (llama-vocab.cpp's, but see _TEKKEN), control tokens parsed only
when special tokens are, user-defined tokens always, and generation ending on llama.cpp's end-of-generation
tokens.
SentencePiece vocabularies (`llama`) carry scores instead of merges; llama.cpp merges the adjacent pair whose
joined text is the best-scoring token, which a BPE whose merges are ranked by that score reproduces.
Gemma 4's (`gemma4`) is a BPE with ranked merges over raw UTF-8 where a space is "▁" (see gemma4_tokenizer).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from mlxd.errors import ModelLoadError
from mlxd.loading.tokenizer import SpecialTokens, Tokenizer

log = logging.getLogger(__name__)

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4

# Texts llama.cpp treats as ending generation whatever the metadata says (llama-vocab.cpp, special_eog_ids).
_EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>", "<|endoftext|>",
    "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
    "<eos>", "<turn|>", "<|tool_response>",  # Gemma 4: its end of text, of a turn, and of a turn calling a tool
})
# gpt-oss's harmony format: <|return|> and <|call|> end a turn, <|end|> only one message of it.
_HARMONY_ENDS = frozenset({"<|return|>", "<|call|>", "<|end|>"})
_HARMONY_MESSAGE_END = "<|end|>"

# llama-vocab.cpp's regexes. Where it adapts a tokenizer.json original for its own regex engine, the adapted
# form is used when it splits the same way (case-insensitive contractions spelled out), the original when it
# does not: for Tekken and GPT-4o llama.cpp approximates \p{Lu}/\p{Ll} by ASCII case and drops \p{M}, which
# splits "ÉCOLE" and "café" (with a combining accent) where the models' own tokenizers do not.
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
           r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_UPPER, _LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*|\p{{N}}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}?"
          rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTIONS}?|\p{{N}}{{1,3}}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class PreTokenizer:
    """One of llama.cpp's BPE pre-tokenizer types: regexes applied in turn, each splitting every piece."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a word that is itself a token is not merged piece by piece
    add_bos: bool = False  # llama.cpp's default when the file has no tokenizer.ggml.add_bos_token


_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))
_LLAMA3_PRE = PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)
_GPT2_PRE = PreTokenizer((_GPT2,))
_DIGITS_PRE = PreTokenizer((r"\p{N}", _GPT2))

# tokenizer.ggml.pre -> pre-tokenizer, grouped as llama-vocab.cpp groups them. Names it knows that are missing
# here (deepseek-*, chatglm-bpe, bloom, poro-chat, viking, chameleon, kimi-k2, superbpe, ...) fall back to the
# default with a warning.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _DEFAULT,
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano"), _LLAMA3_PRE),
    **dict.fromkeys(("dbrx", "smaug-bpe"), PreTokenizer((_LLAMA3,))),
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo", "jais", "trillion", "exaone4", "mellum", "a.x-4.0",
                     "gigachat", "granite-docling", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de",
                     "modern-bert"), _GPT2_PRE),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b", "mellum2"),
                    _DIGITS_PRE),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "kormo", "hunyuan", "f2llmv2",
                     "solar-open", "grok-2"), PreTokenizer((_QWEN2,))),
    "qwen35": PreTokenizer((_QWEN35,)),
    "falcon": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")),
    "tekken": PreTokenizer((_TEKKEN,), ignore_merges=True, add_bos=True),
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie"), PreTokenizer((_GPT4O,))),
}


def _required(metadata: Mapping[str, Any], key: str) -> list[Any]:
    value = metadata.get(key)
    if value is None:
        raise ModelLoadError(f"GGUF file lacks {key}")
    return value


def _pre_tokenizer(metadata: Mapping[str, Any]) -> PreTokenizer:
    name = metadata.get("tokenizer.ggml.pre")
    if not name:
        # llama.cpp warns likewise and splits as its default does.
        log.warning("GGUF file names no tokenizer.ggml.pre; splitting text as llama.cpp's default does")
        return _DEFAULT
    if name not in PRE_TOKENIZERS:
        # llama.cpp refuses a name it does not know; serving with its default split beats not serving.
        log.warning("GGUF pre-tokenizer %r is not one mlxd knows; splitting text as llama.cpp's default does, "
                    "so token ids may differ from the model's own tokenizer", name)
    return PRE_TOKENIZERS.get(name, _DEFAULT)


def _add_special(tok: tokenizers.Tokenizer, tokens: list[str], types: list[int]) -> None:
    control = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL]
    user = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED]
    tok.add_special_tokens(control)
    tok.add_tokens(user)


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab = {t: i for i, t in reversed(list(enumerate(tokens)))}  # the first id of a repeated text wins
    if len(vocab) != len(tokens):
        log.warning("GGUF vocabulary repeats %d token texts; the repeats cannot be produced", len(tokens) - len(vocab))
    return vocab


def _merges(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    # llama.cpp splits a merge at the first space after its first character.
    return [(m[: m.index(" ", 1)], m[m.index(" ", 1) + 1 :]) for m in _required(metadata, "tokenizer.ggml.merges")]


def bpe_tokenizer(metadata: Mapping[str, Any]) -> tuple[tokenizers.Tokenizer, bool]:
    """A byte-level BPE (`tokenizer.ggml.model` = gpt2) and llama.cpp's add_bos default for it."""
    tokens = _required(metadata, "tokenizer.ggml.tokens")
    merges = _merges(metadata)
    pre = _pre_tokenizer(metadata)
    tok = tokenizers.Tokenizer(models.BPE(vocab=_vocab(tokens), merges=merges, ignore_merges=pre.ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    _add_special(tok, tokens, metadata.get("tokenizer.ggml.token_type") or [])
    return tok, pre.add_bos


def _unknown_token(metadata: Mapping[str, Any], tokens: list[str]) -> str | None:
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    return tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None


def _space_escaping(tok: tokenizers.Tokenizer, space_prefix: bool) -> None:
    """Spaces as "▁" (with one put before the text when `space_prefix`), <0xNN> pieces decoded as their bytes."""
    escape = normalizers.Replace(" ", "▁")
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), escape]) if space_prefix else escape
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] if space_prefix else steps)


def score_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Every split of a token into two tokens, best-scoring result first (ties: lower id, then shorter left).

    llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm) repeatedly joins the adjacent pair whose text is
    the highest-scoring vocabulary entry, of whatever token type; BPE applying these merges by rank does the same.
    """
    vocab = set(tokens)
    ranked = []
    for i, text in enumerate(tokens):
        for k in range(1, len(text)):
            if text[:k] in vocab and text[k:] in vocab:
                ranked.append((-scores[i], i, k))
    ranked.sort()
    return [(tokens[i][:k], tokens[i][k:]) for _, i, k in ranked]


def spm_tokenizer(metadata: Mapping[str, Any]) -> tuple[tokenizers.Tokenizer, bool]:
    """A SentencePiece vocabulary with scores (`tokenizer.ggml.model` = llama): spaces become "▁", characters
    outside the vocabulary become <0xNN> byte tokens; llama.cpp adds BOS and a leading space by default."""
    tokens = _required(metadata, "tokenizer.ggml.tokens")
    merges = score_merges(tokens, _required(metadata, "tokenizer.ggml.scores"))
    tok = tokenizers.Tokenizer(models.BPE(vocab=_vocab(tokens), merges=merges,
                                          unk_token=_unknown_token(metadata, tokens), fuse_unk=True,
                                          byte_fallback=True))
    # llama.cpp puts the space before every stretch of text that starts the input or follows a token
    # matched as text; tokenizers normalizes exactly those stretches (added tokens are cut out first).
    _space_escaping(tok, bool(metadata.get("tokenizer.ggml.add_space_prefix", True)))
    _add_special(tok, tokens, metadata.get("tokenizer.ggml.token_type") or [])
    return tok, True


def gemma4_tokenizer(metadata: Mapping[str, Any]) -> tuple[tokenizers.Tokenizer, bool]:
    """Gemma 4's vocabulary (`tokenizer.ggml.model` = gemma4), as Hugging Face's GemmaTokenizer and llama.cpp's
    gemma4 BPE read it: merges ranked as written, applied to raw UTF-8 (no byte-level mapping) in which a space is
    "▁", with no prefix space and no split at spaces; characters outside the vocabulary as <0xNN> byte tokens.

    Newlines: llama.cpp cuts runs of newlines off the text around them and takes a run that is one token whole
    (where Hugging Face's tokenizer.json holds these runs as added tokens, matched before any merge); the converter
    writes them as plain tokens. Here they are added tokens again, and the split stays for runs the vocabulary
    lacks. Other plain tokens that are added tokens in tokenizer.json merge as llama.cpp merges them.
    """
    tokens = _required(metadata, "tokenizer.ggml.tokens")
    types = metadata.get("tokenizer.ggml.token_type") or []
    tok = tokenizers.Tokenizer(models.BPE(vocab=_vocab(tokens), merges=_merges(metadata),
                                          unk_token=_unknown_token(metadata, tokens), fuse_unk=True,
                                          byte_fallback=True))
    _space_escaping(tok, bool(metadata.get("tokenizer.ggml.add_space_prefix", False)))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n+"), behavior="isolated")
    _add_special(tok, tokens, types)
    plain = [t for t, k in zip(tokens, types) if k == NORMAL]
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain if t and not t.strip("\n")])
    return tok, True


# tokenizer.ggml.model -> builder of the tokenizers object and llama.cpp's add_bos default.
BUILDERS = {
    "gpt2": bpe_tokenizer,
    "llama": spm_tokenizer,
    "gemma4": gemma4_tokenizer,
}
# Models whose BOS llama.cpp adds even where the file says not to (its workaround for Gemma 4 files that do).
ALWAYS_ADD_BOS = frozenset({"gemma4"})


def eog_token_ids(metadata: Mapping[str, Any]) -> list[int]:
    """Tokens that end generation: eos, eot and eom ids, and the end-of-turn texts llama.cpp recognizes, less
    <|end|> where <|return|> and <|call|> end generation too (gpt-oss's harmony format: <|end|> closes one message,
    the analysis channel's say, and the model goes on to the next; llama.cpp drops it from its list likewise)."""
    ids = [metadata.get(f"tokenizer.ggml.{name}_token_id") for name in ("eos", "eot", "eom")]
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    ids += [i for i, t in enumerate(tokens) if t in _EOG_TEXTS]
    eog = list(dict.fromkeys(int(i) for i in ids if i is not None and 0 <= i < len(tokens)))
    texts = {tokens[i] for i in eog}
    if _HARMONY_ENDS <= texts:
        eog = [i for i in eog if tokens[i] != _HARMONY_MESSAGE_END]
    return eog


def build_tokenizer(metadata: Mapping[str, Any]) -> Tokenizer:
    """The model's Tokenizer from GGUF metadata; ModelLoadError naming an unsupported tokenizer model."""
    kind = metadata.get("tokenizer.ggml.model")
    if kind not in BUILDERS:
        raise ModelLoadError(f"unsupported GGUF tokenizer model {kind!r}; supported: {', '.join(sorted(BUILDERS))}")
    tok, add_bos_default = BUILDERS[kind](metadata)
    tokens = metadata["tokenizer.ggml.tokens"]

    def text(name: str) -> str | None:
        token_id = metadata.get(f"tokenizer.ggml.{name}_token_id")
        return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None

    special = SpecialTokens(bos=text("bos"), eos=text("eos"), pad=text("padding"), unk=text("unknown"))
    return Tokenizer(
        tok,
        special=special,
        add_bos=kind in ALWAYS_ADD_BOS or bool(metadata.get("tokenizer.ggml.add_bos_token", add_bos_default)),
        extra_eos_ids=eog_token_ids(metadata),
        chat_template=metadata.get("tokenizer.chat_template"),
        # llama.cpp's convert script writes a model's named templates as tokenizer.chat_template.<name>.
        tool_use_template=metadata.get("tokenizer.chat_template.tool_use"),
    )
