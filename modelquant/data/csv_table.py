"""CSV tables for tabular models: numeric feature columns as one float32 array, a label column."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelquant.data import Dataset
from modelquant.data.sources import data_file, register_data_source
from modelquant.errors import UserError

if TYPE_CHECKING:
    from modelquant.recipe import DataSpec

DEFAULT_INPUT_NAME = "input"
"""The model's input name is unknown at load time; the model checks rename a single input."""


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _column(
    path: Path, rows: list[list[str]], lines: list[int], index: int, name: str
) -> np.ndarray:
    """One column as float64; a cell that is not a number is an error naming its row."""
    cells = [row[index] for row in rows]
    try:
        return np.asarray(cells, dtype=np.float64)
    except ValueError:
        for i, cell in enumerate(cells):
            if _number(cell) is None:
                shown = repr(cell) if cell.strip() else "an empty cell"
                raise UserError(
                    f"{path} line {lines[i]}, column '{name}': {shown} is not a number "
                    "(columns fed to the model and the labels must be numeric)"
                ) from None
        raise


@register_data_source("csv", fields=("path", "inputs", "labels", "input_name"))
def load(spec: DataSpec, base_dir: Path) -> Dataset:
    """A CSV table with a header row (path; labels: column; inputs: [columns]; input_name)."""
    path = data_file(spec, base_dir, "csv")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            table = [(reader.line_num, row) for row in reader if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {path} as CSV: {exc}") from None
    if not table:
        raise UserError(f"{path} is empty; a CSV source needs a header row naming the columns")
    header = [name.strip() for name in table[0][1]]
    lines = [line for line, _ in table[1:]]
    rows = [row for _, row in table[1:]]
    if all(_number(name) is not None for name in header):
        raise UserError(
            f"{path}: the first row {table[0][1][:4]} looks like data; add a header row naming "
            "the columns"
        )
    if len(set(header)) != len(header):
        twice = sorted({n for n in header if header.count(n) > 1})
        raise UserError(f"{path}: the header names column(s) {twice} more than once")
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise UserError(
                f"{path} line {lines[i]}: {len(row)} cells, but the header names "
                f"{len(header)} columns"
            )
    labels_name = spec.labels
    if labels_name is None and "labels" in header:
        labels_name = "labels"
    features = spec.inputs or [n for n in header if n != labels_name]
    missing = [n for n in [*features, *([labels_name] if labels_name else [])] if n not in header]
    if missing:
        raise UserError(f"{path} has no column(s) {missing} (its header: {header})")
    if not features:
        raise UserError(f"{path}: no feature columns left besides the labels '{labels_name}'")
    if labels_name in features:
        raise UserError(f"{path}: column '{labels_name}' is both the labels and an input")
    n = len(rows)
    x = np.empty((n, len(features)), dtype=np.float32)
    for j, name in enumerate(features):
        x[:, j] = _column(path, rows, lines, header.index(name), name)
    labels = None
    if labels_name is not None:
        y = _column(path, rows, lines, header.index(labels_name), labels_name)
        # Whole numbers become int64 class indices; anything else stays float for the model
        # checks to refuse by task, with the row named.
        labels = y.astype(np.int64) if np.all(np.isfinite(y) & (y == np.round(y))) else y
    name = spec.input_name or DEFAULT_INPUT_NAME
    return Dataset({name: x}, labels, f"csv:{path.name}")
