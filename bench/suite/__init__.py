"""The benchmarks `python -m bench` runs, each measured against an anchor in the same command."""
