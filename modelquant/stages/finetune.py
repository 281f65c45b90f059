"""Fine-tuning shared by the torch stages (prune, distill): seeded, deterministic, with progress."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modelquant.errors import UserError

if TYPE_CHECKING:
    import torch

    from modelquant.data import Dataset
    from modelquant.stages.base import StageContext

LossFn = Callable[["torch.nn.Module", Sequence["torch.Tensor"], "torch.Tensor"], "torch.Tensor"]
"""loss(model, inputs, labels) -> scalar loss for one batch."""


class FinetuneConfig(BaseModel):
    """Training settings, on the recipe's data.train."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: int = Field(2, ge=0, description="Passes over the training data.")
    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    batch_size: int = Field(64, gt=0, description="Training batch size.")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="Optimizer.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum (sgd only).")


def train_data(ctx: StageContext) -> Dataset:
    if ctx.data_spec("train") is None:
        raise UserError(
            "fine-tuning needs data.train in the recipe (e.g. {source: digits, split: train})"
        )
    data = ctx.data("train")
    if data.labels is None:
        raise UserError("fine-tuning needs labels in data.train")
    return data


def cross_entropy(
    model: torch.nn.Module, inputs: Sequence[torch.Tensor], labels: torch.Tensor
) -> torch.Tensor:
    import torch.nn.functional as F

    out = model(*inputs)
    return F.cross_entropy(out[0] if isinstance(out, tuple | list) else out, labels)


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seeded, deterministic torch for the duration (CPU kernels; restores the previous mode)."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def finetune(
    model: torch.nn.Module,
    ctx: StageContext,
    cfg: FinetuneConfig,
    loss_fn: LossFn = cross_entropy,
    extra_params: Sequence[torch.nn.Parameter] = (),
    label: str = "fine-tune",
) -> dict[str, Any]:
    """Train `model` (and `extra_params`, e.g. feature projections) in place; the loss summary."""
    import torch

    from modelquant import progress

    data = train_data(ctx)
    names = data.input_names
    xs = [torch.from_numpy(np.ascontiguousarray(data.inputs[n])) for n in names]
    assert data.labels is not None
    ys = torch.from_numpy(np.ascontiguousarray(data.labels))
    params = [*model.parameters(), *extra_params]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    epoch_losses: list[float] = []
    steps_per_epoch = -(-len(ys) // cfg.batch_size)
    with (
        deterministic(ctx.seed),
        progress.task(label, total=cfg.epochs * steps_per_epoch, unit="steps") as bar,
    ):
        order_rng = torch.Generator().manual_seed(ctx.seed)
        model.train()
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(ys), generator=order_rng)
            total = 0.0
            for start in range(0, len(ys), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                opt.zero_grad()
                loss = loss_fn(model, [x[idx] for x in xs], ys[idx])
                loss.backward()
                opt.step()
                value = float(loss.detach())
                total += value * len(idx)
                bar.advance(info=f"loss {value:.4f}")
            epoch_losses.append(total / len(ys))
            bar.note(f"epoch {epoch + 1}/{cfg.epochs}, loss {epoch_losses[-1]:.4f}")
        model.eval()
    return {
        "epochs": cfg.epochs,
        "loss_first_epoch": epoch_losses[0] if epoch_losses else None,
        "loss_last_epoch": epoch_losses[-1] if epoch_losses else None,
    }


def accuracy(model: torch.nn.Module, data: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of a torch classifier on a labelled dataset."""
    from modelquant.metrics import top1
    from modelquant.state import torch_forward

    assert data.labels is not None
    model.eval()
    outs = [torch_forward(model, batch) for batch, _ in data.batches(batch_size)]
    return top1(np.concatenate(outs), data.labels)
