"""`.npz` files of named arrays: model inputs by name, plus an optional labels array."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelquant.data import Dataset
from modelquant.data.sources import data_file, register_data_source
from modelquant.errors import UserError

if TYPE_CHECKING:
    from modelquant.recipe import DataSpec


@register_data_source("npz", fields=("path", "inputs", "labels"))
def load(spec: DataSpec, base_dir: Path) -> Dataset:
    """A numpy .npz file of named arrays (path; inputs: [names]; labels: name)."""
    path = data_file(spec, base_dir, "npz")
    try:
        # allow_pickle=False: an .npz holding object arrays could run code when loaded.
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read {path} as a numpy .npz of plain arrays: {exc}") from None
    labels_name = (
        spec.labels if spec.labels is not None else ("labels" if "labels" in arrays else None)
    )
    if labels_name is not None and labels_name not in arrays:
        raise UserError(f"{path} has no array '{labels_name}' (it has {sorted(arrays)})")
    input_names = spec.inputs or [n for n in arrays if n != labels_name]
    missing = [n for n in input_names if n not in arrays]
    if missing:
        raise UserError(f"{path} has no array(s) {missing} (it has {sorted(arrays)})")
    labels = arrays[labels_name] if labels_name is not None else None
    return Dataset({n: arrays[n] for n in input_names}, labels, f"npz:{path.name}")
