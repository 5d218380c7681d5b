"""Image input for vision-language models: decoding and preprocessing with Pillow and numpy (no MLX).

Runs on preparation threads (service/preparation.py), so the MLX worker receives ready pixel arrays (DESIGN.md §1).
"""
