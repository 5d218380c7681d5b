"""mlxd's benchmarks as one tool: `python -m bench <name> [options]` from the repository root (bench/README.md)."""
