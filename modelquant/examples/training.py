"""The examples' trainer: seeded, deterministic Adam on a bundled split, top-1 on a split, and the
command line every example's `train.py` offers (`--out`, `--epochs`, `--curve`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from modelquant.data import Dataset

SEED = 0
LR = 1e-3


def fit(
    model: nn.Module,
    data: Dataset,
    epochs: int,
    batch: int,
    seed: int = SEED,
    after_epoch: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Fit `model` on `data` (one input) with Adam at `LR`; the same seed gives the same weights.

    `after_epoch(epoch, model)` is called after each epoch (1-based), e.g. to score it on val.
    """
    torch.set_num_threads(1)  # one thread: reductions run in one fixed order
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    (inputs,) = data.inputs.values()
    assert data.labels is not None
    x, y = torch.from_numpy(inputs), torch.from_numpy(data.labels)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    order_rng = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x), generator=order_rng)
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        if after_epoch is not None:
            after_epoch(epoch, model.eval())
            model.train()
    return model.eval()


def top1(model: nn.Module, data: Dataset) -> float:
    """Top-1 accuracy of `model` on `data` (one input)."""
    (inputs,) = data.inputs.values()
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs))
    return float((logits.argmax(1).numpy() == data.labels).mean())


def main(
    description: str,
    build: Callable[[argparse.Namespace], nn.Module],
    train: Callable[..., nn.Module],
    accuracy: Callable[[nn.Module, str], float],
    epochs: int,
    out: Path,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """An example's command line: train `build(args)` for `--epochs`, print val (and, unless
    `--curve` is choosing epochs, test) accuracy, write the safetensors checkpoint to `--out`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=out, help="checkpoint to write")
    parser.add_argument("--epochs", type=int, default=epochs, help="epochs of Adam")
    parser.add_argument(
        "--curve", action="store_true", help="print val accuracy after every epoch (to pick epochs)"
    )
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    torch.manual_seed(SEED)  # the factory's initial weights
    model = build(args)

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
