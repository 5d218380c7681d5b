"""The one error a constraint can raise, with a code the service maps to a gRPC status."""

from __future__ import annotations

from typing import Literal

from mlxd.errors import InternalError, InvalidRequest, MlxdError, ResourceExhausted

# invalid: the schema, regex or grammar is wrong or uses what llguidance does not support (INVALID_ARGUMENT), found
#          when it is compiled or, for a grammar that cannot say what may follow, when a mask is filled.
# too_large: the source or the grammar it makes exceeds a size or work limit (RESOURCE_EXHAUSTED).
# rejected: the matcher refused a token or a rollback, which the mask should have made impossible (a bug: INTERNAL).
ConstraintErrorCode = Literal["invalid", "too_large", "rejected"]

# llguidance's messages can quote the whole grammar and parser state; a status message needs far less.
MAX_MESSAGE_CHARS = 2000


class ConstraintError(MlxdError):
    """A constraint that cannot be compiled or followed; `code` says which kind of failure (ConstraintErrorCode)."""

    def __init__(self, code: ConstraintErrorCode, message: str) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + "…"
        super().__init__(message)
        self.code: ConstraintErrorCode = code
        self.message = message

    def __repr__(self) -> str:
        return f"ConstraintError({self.code!r}, {self.message!r})"


def as_request_error(error: ConstraintError) -> MlxdError:
    """The request error a client gets for it: INVALID_ARGUMENT, RESOURCE_EXHAUSTED, or INTERNAL for a token the
    mask should have made impossible."""
    kinds: dict[str, type[MlxdError]] = {"invalid": InvalidRequest, "too_large": ResourceExhausted,
                                         "rejected": InternalError}
    return kinds[error.code](f"constraint: {error.message}")
