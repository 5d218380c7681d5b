"""Image input for vision-language models: decoding and preprocessing with Pillow and numpy (no MLX).

Runs on gRPC threads, so the MLX worker receives ready pixel arrays (DESIGN.md §1).
"""
