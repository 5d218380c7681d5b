"""mlxd: a gRPC model-serving daemon for MLX."""

__version__ = "0.1.0"
