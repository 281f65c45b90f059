"""`python -m modelquant`: the same entry point as the `modelquant` console script."""

from __future__ import annotations

from modelquant.cli import main

if __name__ == "__main__":
    main()
