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

TensorBatch = dict[str, "torch.Tensor"]
"""One training batch: input name -> tensor (rows along axis 0)."""
LossFn = Callable[["torch.nn.Module", TensorBatch, "torch.Tensor | None"], "torch.Tensor"]
"""loss(model, inputs, labels) -> scalar loss for one batch (labels None for unlabeled data)."""


class FinetuneConfig(BaseModel):
    """Training settings, on the recipe's data.train."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: int = Field(2, ge=0, description="Passes over the training data.")
    lr: float = Field(1e-3, gt=0, description="Learning rate.")
    batch_size: int = Field(64, gt=0, description="Training batch size.")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="Optimizer.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum (sgd only).")
    lr_schedule: Literal["constant", "linear"] = Field(
        "constant",
        description="constant: lr throughout; linear: warm up over the first 6 % of the steps, "
        "then decay linearly to 0 (how transformers are fine-tuned).",
    )


def train_data(ctx: StageContext, needs_labels: bool = True) -> Dataset:
    if ctx.data_spec("train") is None:
        raise UserError(
            "fine-tuning needs data.train in the recipe (e.g. {source: digits, split: train})"
        )
    data = ctx.data("train")
    if needs_labels and data.labels is None:
        raise UserError("fine-tuning needs labels in data.train")
    return data


def call(model: torch.nn.Module, inputs: TensorBatch) -> Any:
    """The model's output on one batch: a Hugging Face model (or a wrapper of one, e.g. DDP) is fed
    by input name, since the data's column order need not be its forward's argument order; any
    other module positionally, in the data's order."""
    from modelquant.state import takes_names

    if takes_names(getattr(model, "module", model)):
        return model(**inputs)
    return model(*inputs.values())


def cross_entropy(
    model: torch.nn.Module, inputs: TensorBatch, labels: torch.Tensor | None
) -> torch.Tensor:
    import torch.nn.functional as F

    assert labels is not None  # train_data(needs_labels=True) checked
    out = call(model, inputs)
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
    needs_labels: bool = True,
) -> dict[str, Any]:
    """Train `model` (and `extra_params`, e.g. feature projections) in place; the loss summary.

    Parameters with `requires_grad` off stay as they are. Text batches (data with per-sample
    lengths) are cut to their longest sample: padding costs time and teaches nothing."""
    import torch

    from modelquant import distributed, progress

    data = train_data(ctx, needs_labels)
    xs = {n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in data.inputs.items()}
    ys = None if data.labels is None else torch.from_numpy(np.ascontiguousarray(data.labels))
    lengths = None if data.lengths is None else torch.from_numpy(data.lengths.astype(np.int64))
    samples = len(data)
    # Under torchrun: DDP/FSDP, this rank's shard and share of the batch; alone: the model as is.
    dp = distributed.DataParallel(model, ctx.world, cfg.batch_size, ctx.seed, samples)
    params = [p for p in (*dp.module.parameters(), *extra_params) if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    epoch_losses: list[float] = []
    steps_per_epoch = dp.steps_per_epoch
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    warmup = max(1, round(0.06 * total_steps))

    def factor(done: int) -> float:
        if cfg.lr_schedule == "constant":
            return 1.0
        decay = max(0.0, (total_steps - done) / max(1, total_steps - warmup))
        return min((done + 1) / warmup, decay)

    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    with (
        deterministic(ctx.seed),
        progress.task(label, total=cfg.epochs * steps_per_epoch, unit="steps") as bar,
    ):
        dp.module.train()
        for epoch in range(cfg.epochs):
            total = 0.0
            for idx in dp.epoch_batches(epoch, lengths):
                batch = {n: x[idx] for n, x in xs.items()}
                if lengths is not None:
                    longest = int(lengths[idx].max())
                    batch = {n: x[:, :longest] if x.dim() >= 2 else x for n, x in batch.items()}
                opt.zero_grad()
                loss = loss_fn(dp.module, batch, None if ys is None else ys[idx])
                loss.backward()
                dp.sync(extra_params)
                opt.step()
                scheduler.step()
                value = float(loss.detach())
                total += value * len(idx)
                bar.advance(info=f"loss {value:.4f}")
            epoch_losses.append(dp.mean(total, dp.per_epoch))
            bar.note(f"epoch {epoch + 1}/{cfg.epochs}, loss {epoch_losses[-1]:.4f}")
        dp.finish()
        model.eval()
    if dp.details() is not None:
        ctx.details["data_parallel"] = dp.details()
    return {
        "epochs": cfg.epochs,
        "loss_first_epoch": epoch_losses[0] if epoch_losses else None,
        "loss_last_epoch": epoch_losses[-1] if epoch_losses else None,
    }


def epoch_batches(
    samples: int,
    batch_size: int,
    rng: torch.Generator,
    lengths: torch.Tensor | None,
    order: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """One epoch's batches of sample indices, in a seeded random order (`order`, when given: the
    samples to batch in that order, e.g. a rank's shard under torchrun). Text (per-sample lengths)
    is batched by length: the shuffled samples are sorted within windows of 16 batches and the
    batches then shuffled, so a batch of short sentences is not padded to a long one's length
    (the order stays random between windows and between batches)."""
    import torch

    if order is None:
        order = torch.randperm(samples, generator=rng)
    if lengths is None:
        return list(order.split(batch_size))
    batches: list[torch.Tensor] = []
    window = batch_size * 16
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches.extend(chunk.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=rng)]


def accuracy(model: torch.nn.Module, data: Dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of a torch classifier on a labelled dataset."""
    from modelquant.metrics import top1
    from modelquant.state import torch_forward

    assert data.labels is not None
    model.eval()
    outs = [torch_forward(model, batch) for batch, _ in data.batches(batch_size)]
    return top1(np.concatenate(outs), data.labels)


def embeddings(model: torch.nn.Module, data: Dataset, batch_size: int = 32) -> np.ndarray:
    """A sentence encoder's pooled, normalized embeddings of `data`, as the metric makes them."""
    from modelquant.state import torch_outputs
    from modelquant.tasks import FEATURE_EXTRACTION

    return torch_outputs(model, data, FEATURE_EXTRACTION, batch_size)


def similarity_to(
    model: torch.nn.Module,
    reference: torch.nn.Module | np.ndarray,
    data: Dataset,
    batch_size: int = 32,
) -> dict[str, Any]:
    """How close a sentence encoder's embeddings are to a reference model's on `data` (or to
    its `embeddings`, computed once): cosine mean / p5 / min and nearest-neighbour agreement."""
    from modelquant.tasks import FEATURE_EXTRACTION as task

    want = reference if isinstance(reference, np.ndarray) else embeddings(reference, data)
    stats = task.similarity(embeddings(model, data, batch_size), want)
    assert stats is not None
    return stats


def cosine_loss(reference: torch.nn.Module) -> LossFn:
    """1 - cosine between a sentence encoder's pooled embeddings and `reference`'s on the same
    batch: fine-tuning without labels is distillation from the reference."""
    import torch

    from modelquant.models.transformer import pooled
    from modelquant.state import first_output

    reference.eval()

    def loss(model: torch.nn.Module, inputs: TensorBatch, labels: torch.Tensor | None) -> Any:
        mask = inputs["attention_mask"]
        with torch.no_grad():
            target = pooled(first_output(call(reference, inputs)), mask)
        got = pooled(first_output(call(model, inputs)), mask)
        return (1 - (got * target).sum(dim=-1)).mean()

    return loss
