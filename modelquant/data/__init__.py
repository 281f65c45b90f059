"""Data sources behind one interface: a `Dataset` of named numpy arrays plus optional labels."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelquant.errors import UserError

if TYPE_CHECKING:
    from modelquant.recipe import DataSpec

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class Dataset:
    """Samples along axis 0 of every input array; `labels` (if any) has one entry per sample."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    description: str = ""
    lengths: np.ndarray | None = None
    """Per sample, the tokens that are not padding (text data); with `bucket`, batches are cut to
    their longest sample rounded up to a multiple of `bucket` along axis 1."""
    bucket: int | None = None
    _memo: dict[str, str] = field(default_factory=dict, init=False, compare=False, repr=False)
    """Computed-once values (the content hash); a dict so that the frozen instance can fill it."""

    def __post_init__(self) -> None:
        counts = {name: len(a) for name, a in self.inputs.items()}
        if self.labels is not None:
            counts["<labels>"] = len(self.labels)
        if not counts:
            raise UserError(f"data {self.description} holds no arrays; give it the model inputs")
        if len(set(counts.values())) != 1:
            raise UserError(
                f"data {self.description}: arrays disagree on the sample count {counts}; every "
                "array, the labels too, needs one entry per sample"
            )

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    def content_hash(self) -> str:
        """sha256 of the inputs (order, names, dtypes, shapes, bytes) and labels; computed once.

        The description is left out: the same arrays from two places are the same data.
        """
        if "content_hash" not in self._memo:
            digest = hashlib.sha256()
            arrays = [(f"input:{n}", a) for n, a in self.inputs.items()]
            if self.labels is not None:
                arrays.append(("labels", self.labels))
            for name, array in arrays:
                a = np.ascontiguousarray(array)
                digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
                digest.update(a.reshape(-1).view(np.uint8).data)
            self._memo["content_hash"] = digest.hexdigest()
        return self._memo["content_hash"]

    def take(self, samples: int | None) -> Dataset:
        """The first `samples` rows (all when None)."""
        if samples is None or samples >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:samples]
        inputs = {name: a[:samples] for name, a in self.inputs.items()}
        lengths = None if self.lengths is None else self.lengths[:samples]
        return Dataset(inputs, labels, f"{self.description}[:{samples}]", lengths, self.bucket)

    def replace(self, **changes: Any) -> Dataset:
        """A copy with some fields changed (lengths and bucket kept unless changed)."""
        import dataclasses

        return dataclasses.replace(self, **changes)

    def batches(
        self, batch_size: int, drop_last: bool = False, bucketed: bool = True
    ) -> Iterator[tuple[Batch, np.ndarray | None]]:
        """Consecutive batches in order; the last one may be short unless `drop_last`. Bucketed
        text data is cut per batch to its bucket length unless `bucketed` is false (calibration
        wants equal shapes)."""
        n = len(self)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            labels = None if self.labels is None else self.labels[start:end]
            batch = {name: a[start:end] for name, a in self.inputs.items()}
            if bucketed and self.bucket and self.lengths is not None:
                longest = int(self.lengths[start:end].max())
                cut = -(-longest // self.bucket) * self.bucket
                batch = {k: a[:, :cut] if a.ndim >= 2 else a for k, a in batch.items()}
            yield batch, labels

    def sample_batch(self, batch_size: int) -> Batch:
        """A batch of exactly `batch_size` rows, repeating samples when the set is smaller."""
        idx = np.arange(batch_size) % len(self)
        return {name: np.ascontiguousarray(a[idx]) for name, a in self.inputs.items()}


def load_dataset(spec: DataSpec, base_dir: Path) -> Dataset:
    """Open the data a recipe's data entry names; errors name the entry and how to fix it."""
    from modelquant.data.sources import registered_data_sources

    source = registered_data_sources().get(spec.source)
    if source is None:  # the recipe validator already limits the names
        raise UserError(f"unknown data source '{spec.source}'")
    return source.load(spec, base_dir).take(spec.samples)


# Each module registers its source (`@register_data_source`); they import Dataset from above.
from modelquant.data import digits, npz, csv_table, breast_cancer, text  # noqa: E402, F401, I001
