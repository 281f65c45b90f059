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
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a single array saved with np.save
            raise UserError(
                f"{path} is one numpy array (.npy), not an .npz of named arrays; save it with "
                "np.savez(path, input=..., labels=...)"
            )
        with loaded as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc) or ("the file is empty" if isinstance(exc, EOFError) else repr(exc))
        raise UserError(f"cannot read {path} as a numpy .npz of plain arrays: {reason}") from None
    if not arrays:
        raise UserError(f"{path} holds no arrays; save the model inputs (and labels) in it")
    scalars = sorted(name for name, a in arrays.items() if a.ndim == 0)
    if scalars:
        raise UserError(
            f"{path}: array(s) {scalars} are single values; every array holds one row per sample "
            "along its first axis"
        )
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
