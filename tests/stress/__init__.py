"""The stress tests at full size, run by hand: `python -m tests.stress.<name> --help` (soak, fuzz, process_faults,
attack). The suite runs each at a size that fits CI (tests/faults, tests/fuzz, tests/availability)."""
