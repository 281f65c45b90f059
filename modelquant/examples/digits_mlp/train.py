"""Train the digits MLP, seeded and deterministic, and write its safetensors checkpoint.

Usage: python -m modelquant.examples.digits_mlp.train [--out PATH] [--epochs N] [--curve]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from modelquant.examples.digits.train import accuracy, train
from modelquant.examples.digits_mlp.model import build

# The digits CNN's trainer (Adam at 1e-3 in batches of 64, seed 0, one thread, deterministic); the
# epoch count is chosen on val (never test) with `--curve --epochs 40`, see README.md.
EPOCHS = 23
DEFAULT_OUT = Path(__file__).resolve().parent / "mlp.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the digits MLP (seeded, deterministic).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint to write")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs of Adam")
    parser.add_argument(
        "--curve", action="store_true", help="print val accuracy after every epoch (to pick epochs)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)  # the factory's initial weights
    model = build()

    def report(epoch: int, model: nn.Module) -> None:
        print(f"epoch {epoch:3d}  val accuracy {accuracy(model, 'val'):.4f}", flush=True)

    model = train(model, args.epochs, after_epoch=report if args.curve else None)
    params = sum(p.numel() for p in model.parameters())
    scores = f"val accuracy {accuracy(model, 'val'):.4f}"
    if not args.curve:  # the test split is scored once, on the final model, never while choosing
        scores += f"; test accuracy {accuracy(model, 'test'):.4f}"
    print(f"{params:,} parameters; {scores}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
