"""How one request picks its tokens: the parameters and their validation. Pure data, no MLX, so the gRPC
threads that validate requests import nothing of the device."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mlxd.errors import InvalidRequest

_PENALTY_RANGE = 2.0
_BIAS_RANGE = 100.0
_SEED_LIMIT = 2**64  # mx.random.key takes an unsigned 64-bit seed


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens. temperature 0 means greedy; 0 / 1.0 turn top_k / top_p off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repetition_window: int = 64  # recent tokens (prompt included) the repetition penalty looks at
    presence_penalty: float = 0.0  # OpenAI semantics, over the generated tokens only
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict, hash=False)
    seed: int | None = None

    def __post_init__(self) -> None:
        # A read-only copy: the caller's dict may change later, the params of a running request must not.
        object.__setattr__(self, "logit_bias", MappingProxyType(dict(self.logit_bias)))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def validate(self, vocab_size: int) -> None:
        """Raise InvalidRequest naming the first field whose value is NaN, infinite or out of range."""
        _check_real("temperature", self.temperature, self.temperature >= 0, ">= 0")
        _check_int("top_k", self.top_k, 0)
        _check_real("top_p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]")
        _check_real("min_p", self.min_p, 0 <= self.min_p <= 1, "in [0, 1]")
        _check_real("repetition_penalty", self.repetition_penalty, self.repetition_penalty > 0, "> 0")
        _check_int("repetition_window", self.repetition_window, 0)
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check_real(name, value, abs(value) <= _PENALTY_RANGE, f"in [-{_PENALTY_RANGE}, {_PENALTY_RANGE}]")
        for token, bias in self.logit_bias.items():
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
                raise InvalidRequest(f"logit_bias key {token!r} is outside the vocabulary [0, {vocab_size})")
            _check_real(f"logit_bias[{token}]", bias, abs(bias) <= _BIAS_RANGE, f"in [-{_BIAS_RANGE}, {_BIAS_RANGE}]")
        if self.seed is not None:
            _check_int("seed", self.seed, 0)
            if self.seed >= _SEED_LIMIT:
                raise InvalidRequest(f"seed must be < 2**64, got {self.seed}")


def _check_real(name: str, value: object, in_range: bool, expected: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"{name} must be a finite number {expected}, got {value!r}")
    if not in_range:
        raise InvalidRequest(f"{name} must be {expected}, got {value!r}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequest(f"{name} must be an integer >= {minimum}, got {value!r}")
