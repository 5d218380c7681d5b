"""The model's tokenizer: Hugging Face `tokenizers` plus the special tokens and chat template of its folder.

Safe to use from any thread: nothing is mutated after loading (but the renderer's cache of client templates, which
locks) and no MLX is involved. Chat templates render through loading/chat_template.py.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import tokenizers

from mlxd.errors import ModelLoadError, Unsupported
from mlxd.loading.chat_template import ChatTemplate, Clock, TemplateRenderer

log = logging.getLogger(__name__)

_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# A token id's string (Tokenizer.id_to_token): None for an id outside the tokenizer's vocabulary.
TokenText = Callable[[int], str | None]


@dataclass(frozen=True)
class SpecialTokens:
    bos: str | None = None
    eos: str | None = None
    pad: str | None = None
    unk: str | None = None


class Tokenizer:
    """Encode, decode and render chat prompts for one model."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, special: SpecialTokens, add_bos: bool,
                 extra_eos_ids: list[int], chat_template: str | None, clock: Clock = datetime.now,
                 tool_use_template: str | None = None) -> None:
        self._tok = tokenizer
        serialized = tokenizer.to_str()
        self.serialized = serialized  # the tokenizers JSON: what llguidance builds its token tables from
        # A second instance that treats special-token strings as text; the flag is per instance, and
        # flipping it per call would race between gRPC threads.
        self._tok_plain = tokenizers.Tokenizer.from_str(serialized)
        self._tok_plain.encode_special_tokens = True
        self._special = special
        self.bos_token_id = self._id_of(special.bos)
        self._bos_to_add = self.bos_token_id if add_bos else None  # None: encode never prepends one
        eos = [i for i in [self._id_of(special.eos), *extra_eos_ids] if i is not None]
        self.eos_token_ids: list[int] = list(dict.fromkeys(eos))
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        self.byte_fallback_ids: frozenset[int] = _byte_fallback_ids(tokenizer, json.loads(serialized))
        # Strings that parse_special=True turns into one special token each (content -> id).
        added = tokenizer.get_added_tokens_decoder()
        self.special_tokens: dict[str, int] = {t.content: i for i, t in added.items() if t.special}
        # Every added token, special or not (Qwen's <think> and <tool_call> are not): each is one token to a
        # grammar (llguidance) and a marker a reply parser may look for.
        self.added_tokens: dict[str, int] = {t.content: i for i, t in added.items()}
        self.chat_template = chat_template  # the model's template source, None when it has none
        # A second named template for chats with tools (Hermes 3 ships "default" and "tool_use"), used for them
        # as transformers does.
        self.tool_use_template = tool_use_template
        self._renderer = TemplateRenderer(clock)
        self._template: ChatTemplate | None = None
        self._tool_template: ChatTemplate | None = None
        self._template_error = ""
        try:
            if chat_template is not None:
                self._template = self._renderer.compile(chat_template)
            if tool_use_template is not None:
                self._tool_template = self._renderer.compile(tool_use_template)
        except jinja2.TemplateSyntaxError as exc:
            # Raw completions still work; chat requests get told why they cannot.
            self._template, self._tool_template = None, None
            self._template_error = f"the model's chat template does not compile: {exc}"
            log.warning("%s", self._template_error)

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def vocabulary(self) -> dict[str, int]:
        """Every token's string and id, added tokens included (a draft model must share the target's)."""
        return self._tok.get_vocab(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool = True, parse_special: bool = True) -> list[int]:
        """add_special_tokens prepends BOS when the model wants one and the text does not already start with
        it; parse_special=False encodes special-token strings in the text ("<eos>") as plain text. Encode a
        rendered chat template with add_special_tokens=False: the template writes its own BOS."""
        tok = self._tok if parse_special else self._tok_plain
        # The post-processor's special tokens are never used; BOS is handled here so it is never doubled.
        # encode_batch_fast releases the GIL while it works (encode holds it: 10 MB froze every thread ~10 s).
        ids = tok.encode_batch_fast([text], add_special_tokens=False)[0].ids
        bos = self._bos_to_add
        if add_special_tokens and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def template_source(self, tools: bool) -> str | None:
        """The source of the model's template a chat is rendered with: the tool_use one for a chat with tools when
        the model has one, else the default."""
        return self.tool_use_template if tools and self._tool_template is not None else self.chat_template

    def apply_chat_template(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
                            tools: list[dict[str, Any]] | None = None,
                            chat_template_kwargs: Mapping[str, Any] | None = None,
                            chat_template: str | None = None) -> str:
        """Render messages with the model's template (its tool_use one when tools are given and it has one), or
        with `chat_template` (a client's source) when given; the result already contains BOS if the template
        writes it. chat_template_kwargs are template variables beside the special tokens (bos_token, eos_token,
        ...), which they may replace as in transformers."""
        if chat_template:
            template = self._renderer.compile_override(chat_template)
        elif tools and self._tool_template is not None:
            template = self._tool_template
        elif self._template is not None:
            template = self._template
        else:
            raise Unsupported(self._template_error or "this model has no chat template")
        tokens = {f"{name}_token": value for name, value in vars(self._special).items() if value is not None}
        return self._renderer.render(template, messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                     chat_template_kwargs={**tokens, **(chat_template_kwargs or {})})


def load_tokenizer(folder: Path) -> Tokenizer:
    """Build the Tokenizer of a Hugging Face model folder (tokenizer.json is required)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist")
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    config = _read_json(folder / "tokenizer_config.json")
    generation = _read_json(folder / "generation_config.json")
    special = SpecialTokens(**{name: _token_string(config.get(f"{name}_token"))
                               for name in ("bos", "eos", "pad", "unk")})
    if "add_bos_token" in config:
        add_bos = bool(config["add_bos_token"])
    else:  # no explicit flag: the tokenizer's own post-processor decides, as in transformers
        bos_id = tok.token_to_id(special.bos) if special.bos else None
        add_bos = bos_id is not None and tok.encode("", add_special_tokens=True).ids[:1] == [bos_id]
    eos = generation.get("eos_token_id")
    extra_eos = [eos] if isinstance(eos, int) else list(eos or [])
    default_template, tool_use_template = _find_chat_templates(folder, config)
    return Tokenizer(tok, special=special, add_bos=add_bos, extra_eos_ids=extra_eos,
                     chat_template=default_template, tool_use_template=tool_use_template)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} does not hold a JSON object")
    return data


def _token_string(value: object) -> str | None:
    """tokenizer_config writes a special token as a string or as an AddedToken dict with "content"."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _find_chat_templates(folder: Path, config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(the default template, the tool_use one or None): chat_template.jinja wins, then chat_template.json
    (processor folders), then tokenizer_config, whose chat_template may be a list of named ones."""
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8"), None
    template = _read_json(folder / "chat_template.json").get("chat_template") or config.get("chat_template")
    tool_use = None
    if isinstance(template, list):  # named templates, e.g. "default" and "tool_use"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        if "default" not in named:
            log.warning("chat templates %s have no 'default'; using the first", list(named))
        template = named.get("default") or next(iter(named.values()), None)
        tool_use = named.get("tool_use")
    return (template if isinstance(template, str) else None), (tool_use if isinstance(tool_use, str) else None)


def _byte_fallback_ids(tok: tokenizers.Tokenizer, serialized: dict[str, Any]) -> frozenset[int]:
    """The <0xNN> pieces when the model falls back to bytes; their text depends on the tokens after them."""
    if not serialized.get("model", {}).get("byte_fallback"):
        return frozenset()
    return frozenset(i for piece, i in tok.get_vocab(with_added_tokens=False).items() if _BYTE_PIECE.fullmatch(piece))
