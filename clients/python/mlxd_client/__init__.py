"""Python client for the mlxd daemon. Imports no MLX: any Python program can be a client."""

from mlxd_client.channel import TlsOptions
from mlxd_client.chat import chat_messages, multimodal_chat
from mlxd_client.client import Client, Completion, MlxdClientError, collect
from mlxd_proto.v1 import inference_pb2 as pb

__all__ = ["Client", "Completion", "MlxdClientError", "TlsOptions", "chat_messages", "collect", "multimodal_chat", "pb"]
