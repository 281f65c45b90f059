"""Train the digits CNN, seeded and deterministic, and write its safetensors checkpoint.

Usage: python -m examples.digits.train [--out examples/digits/cnn.safetensors] [--half]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from examples.digits.model import build, build_half
from modelquant.data import digits

SEED = 0
EPOCHS = 30  # digits converges by ~20 epochs; 30 leaves margin and takes seconds on a CPU
LR = 1e-3
BATCH = 64


def train(model: nn.Module, epochs: int = EPOCHS, seed: int = SEED) -> nn.Module:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    data = digits.load("train")
    x, y = torch.from_numpy(data.inputs["input"]), torch.from_numpy(data.labels)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    order_rng = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=order_rng)
        for start in range(0, len(x), BATCH):
            idx = order[start : start + BATCH]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module) -> float:
    data = digits.load("test")
    with torch.no_grad():
        logits = model(torch.from_numpy(data.inputs["input"]))
    return float((logits.argmax(1).numpy() == data.labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the digits CNN (seeded).")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "cnn.safetensors")
    parser.add_argument("--half", action="store_true", help="train build_half() instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    model = train(build_half() if args.half else build())
    params = sum(p.numel() for p in model.parameters())
    print(f"{params:,} parameters; test accuracy {accuracy(model):.4f}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
