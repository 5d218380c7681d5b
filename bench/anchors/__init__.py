"""Engines a benchmark compares mlxd against (and mlxd's engine without gRPC), each in a process of its own."""
