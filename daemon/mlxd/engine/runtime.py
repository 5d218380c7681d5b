"""What the engine needs of the loaded model and its tokenizer, in one record built one way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mlxd.engine.speculation import default_depth
from mlxd.engine.vision import ImageEncoder
from mlxd.models.protocol import LanguageModel
from mlxd.models.recurrent_cache import RecurrentCache

if TYPE_CHECKING:
    from mlxd.engine.prefix_cache import PrefixCache
    from mlxd.engine.runner import Runner
    from mlxd.loading.loader import LoadedModel
    from mlxd.loading.tokenizer import Tokenizer


class EngineParts(Protocol):
    """How a scheduler builds its runner and prefix cache when they are not the plain ones (tensor parallelism:
    parallel/replication.py replays their calls on the other ranks)."""

    def runner(self, runtime: ModelRuntime) -> Runner: ...

    def prefix_cache(self, budget_bytes: int, runner: Runner) -> PrefixCache: ...


@dataclass
class ModelRuntime:
    model: LanguageModel
    decode_text: Callable[[list[int]], str]
    byte_fallback_ids: frozenset[int]     # tokens the detokenizer holds until their byte run ends
    eos_ids: frozenset[int]
    context_length: int
    vocab_size: int
    image_encoder: ImageEncoder | None = None    # vision-language models only
    special_ids: frozenset[int] = frozenset()     # what GenerationRequest.skip_special_tokens leaves out of the text
    parts: EngineParts | None = None              # None: the plain runner and prefix cache
    draft_model: LanguageModel | None = None      # speculative decoding's drafter (same vocabulary), if any

    def speculation_depth(self, given: int) -> int:
        """The most tokens a row drafts a step: `given` (serve --speculate-depth), or when 0 this model's default
        (engine/speculation.py default_depth)."""
        recurrent = any(isinstance(cache, RecurrentCache) for cache in self.model.make_cache())
        return given or default_depth(self.draft_model is not None, recurrent)

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, tokenizer: Tokenizer, image_cache_bytes: int = 256 << 20) -> ModelRuntime:
        """The runtime of a model as the loader returns it; end ids come from the tokenizer and the config."""
        eos = frozenset(loaded.end_token_ids(tokenizer.eos_token_ids))
        vision = loaded.vision_language
        encoder = ImageEncoder(vision, image_cache_bytes) if vision is not None else None
        return cls(loaded.model, tokenizer.decode, tokenizer.byte_fallback_ids, eos, loaded.context_length,
                   loaded.vocab_size, encoder, frozenset(tokenizer.special_tokens.values()))
