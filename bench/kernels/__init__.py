"""Checks of the CUDA kernels' sources that run without a GPU (for when device time is short)."""
