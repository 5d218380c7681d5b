"""The one error hierarchy of mlxd; the service maps each class to one gRPC status code."""


class MlxdError(Exception):
    """Base class: a failure the daemon expects and reports to the client."""


class InvalidRequest(MlxdError):
    """The request itself is wrong (INVALID_ARGUMENT). The message names the bad field and value."""


class Unsupported(MlxdError):
    """The request is well-formed but this model or daemon cannot serve it (FAILED_PRECONDITION)."""


class ResourceExhausted(MlxdError):
    """Queue full, prompt longer than the context, or a size limit hit (RESOURCE_EXHAUSTED)."""


class Unavailable(MlxdError):
    """The daemon is loading or draining (UNAVAILABLE)."""


class Cancelled(MlxdError):
    """The request was cancelled by its client, a Cancel RPC or shutdown (CANCELLED)."""


class DeadlineExceeded(MlxdError):
    """The request's deadline passed (DEADLINE_EXCEEDED)."""


class ModelLoadError(MlxdError):
    """The model files cannot be loaded; the daemon exits with this one-line reason."""


class InternalError(MlxdError):
    """A bug met while serving one request (INTERNAL); logged with its traceback, and the worker goes on."""
