#!/usr/bin/env python3
"""Fetch the real models mlxd tests against into the cache folder; prints each model's path on stdout.

    python3 scripts/fetch_models.py            # every known model
    python3 scripts/fetch_models.py smollm2    # just these

Progress goes to stderr. Running it again does nothing but check the digests.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))

from mlxd.demo_models import MODELS, cache_dir, fetch_model  # noqa: E402
from mlxd.errors import ModelLoadError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help=f"models to fetch: {', '.join(sorted(MODELS))} (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger(__name__).info("cache folder: %s", cache_dir())
    try:
        for name in args.models or sorted(MODELS):
            sys.stdout.write(f"{fetch_model(name)}\n")
    except ModelLoadError as e:
        logging.getLogger(__name__).error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
