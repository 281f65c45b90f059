"""Train the tabular MLP, seeded and deterministic, and write its safetensors checkpoint.

Usage: python -m modelquant.examples.tabular_mlp.train [--out PATH] [--epochs N] [--curve]
"""

from __future__ import annotations

from pathlib import Path

from modelquant.examples import training
from modelquant.examples.digits.train import accuracy, train
from modelquant.examples.tabular_mlp.model import build

# The digits CNN's trainer (Adam at 1e-3 in batches of 64, seed 0, one thread, deterministic); the
# epoch count is chosen on val (never test) with `--curve --epochs 40`, see README.md.
EPOCHS = 10
DEFAULT_OUT = Path(__file__).resolve().parent / "mlp.safetensors"


def main() -> None:
    training.main(
        "Train the tabular MLP (seeded, deterministic).",
        lambda args: build(),
        train,
        accuracy,
        EPOCHS,
        DEFAULT_OUT,
    )


if __name__ == "__main__":
    main()
