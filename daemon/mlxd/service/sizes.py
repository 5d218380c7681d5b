"""Size checks that run before any expensive work: each costs O(1) per field (a length), never a pass over the data.

A prompt of at most N tokens cannot be longer than N × (the longest token's bytes) × (slack for normalizers
that shrink text, such as NFKC's 3:1 for fullwidth letters) characters, so longer text is refused before it is
tokenized. Lists that are checked element by element (token ids, logit_bias, stops) have their lengths checked
first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlxd.errors import InvalidRequest, ResourceExhausted
from mlxd.loading.tokenizer import TokenText
from mlxd.service.limits import Limits
from mlxd_proto.v1 import inference_pb2 as pb

NORMALIZER_SLACK = 4


def longest_token_bytes(token_text: TokenText, vocab_size: int) -> int:
    """UTF-8 length of the longest token string: at least the bytes of text any one token stands for (byte-level
    pieces are one character per byte, sentencepiece's ▁ is 3 bytes for a space, <0x41> 6 for one byte)."""
    return max((len((token_text(i) or "").encode()) for i in range(vocab_size)), default=1) or 1


@dataclass(frozen=True)
class PromptBounds:
    max_tokens: int         # prompt tokens that fit
    max_chars: int          # characters of text that can tokenize to max_tokens or fewer
    context_length: int

    @classmethod
    def of(cls, limits: Limits, context_length: int, token_bytes: int) -> PromptBounds:
        max_tokens = min(limits.max_prompt_tokens or context_length, context_length - 1)
        return cls(max_tokens, max_tokens * token_bytes * NORMALIZER_SLACK, context_length)

    def check_tokens(self, count: int, field: str = "the prompt") -> None:
        if count > self.max_tokens:
            raise ResourceExhausted(f"{field} has {count} tokens; at most {self.max_tokens} fit "
                                    f"(context length {self.context_length})")

    def check_chars(self, count: int, field: str, scale: int = 1) -> None:
        """scale: how many prompts' worth of text the field may hold (Tokenize takes more than one prompt)."""
        if count > self.max_chars * scale:
            raise ResourceExhausted(f"{field} has {count} characters; text that long cannot fit in "
                                    f"{self.max_tokens * scale} tokens (context length {self.context_length})")

    def check_messages(self, count: int, field: str) -> None:
        """Each chat message takes at least one token."""
        if not count:
            raise InvalidRequest(f"{field} is empty")
        if count > self.max_tokens:
            raise ResourceExhausted(f"{field} has {count} messages; at most {self.max_tokens} tokens fit "
                                    f"(context length {self.context_length})")


def check_options(options: pb.GenerationOptions, vocab_size: int, limits: Limits) -> None:
    if len(options.stop) > limits.max_stop_strings:
        raise InvalidRequest(f"stop has {len(options.stop)} strings; at most {limits.max_stop_strings} are allowed")
    if len(options.logit_bias) > vocab_size:
        raise InvalidRequest(f"logit_bias has {len(options.logit_bias)} entries; the vocabulary has {vocab_size} "
                             "tokens")
    if len(options.stop_token_ids) > vocab_size:
        raise InvalidRequest(f"stop_token_ids has {len(options.stop_token_ids)} ids; the vocabulary has "
                             f"{vocab_size} tokens")


def check_token_ids(ids: Any, vocab_size: int, field: str) -> list[int]:
    """The ids as a list, after one vectorized range check (a Python loop over a long list holds the GIL)."""
    array = np.fromiter(ids, dtype=np.int64, count=len(ids))
    bad = np.flatnonzero((array < 0) | (array >= vocab_size))
    if bad.size:
        i = int(bad[0])
        raise InvalidRequest(f"{field}[{i}] = {int(array[i])} is outside the vocabulary [0, {vocab_size})")
    return array.tolist()


def check_response(message: Any, max_bytes: int) -> None:
    """A response larger than the send limit would fail inside gRPC (as ExecuteBatchError, not a status): refuse
    it with one the client can act on."""
    size = message.ByteSize()
    if size > max_bytes:
        raise ResourceExhausted(f"the response would be {size} bytes; the limit is {max_bytes} (--max-message-mb)")
