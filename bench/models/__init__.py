"""Model files for the benchmarks: random weights of published shapes, and mlxd's arrays exported for mlx-lm."""
