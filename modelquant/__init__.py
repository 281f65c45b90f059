"""modelquant: compress a trained model with one recipe and measure what each step cost."""

from __future__ import annotations

__version__ = "0.1.0"
