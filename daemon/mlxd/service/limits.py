"""Request limits the service enforces before anything reaches the worker."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlxd.images.decode import ImageLimits


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int = 0          # 0 = the model's context length
    max_stop_strings: int = 256
    max_stop_length: int = 1024         # characters per stop string
    max_top_logprobs: int = 20
    max_request_id_length: int = 256
    max_message_bytes: int = 64 << 20   # gRPC receive limit (images travel inline)
    images: ImageLimits = field(default_factory=ImageLimits)
