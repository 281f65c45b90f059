"""Text files (CSV, JSON lines, plain text) tokenized with the model's own tokenizer: the data of
Hugging Face models. Fixed calibration / validation / evaluation splits of one file."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelquant.data import Dataset
from modelquant.data.sources import data_file, register_data_source
from modelquant.errors import UserError

if TYPE_CHECKING:
    from modelquant.recipe import DataSpec

SPLITS = ("calibration", "validation", "evaluation", "all")
FRACTIONS = {"calibration": 0.3, "validation": 0.2, "evaluation": 0.5}
"""Shares of the rows, after one fixed shuffle (independent of the recipe seed), in this order."""
SPLIT_SEED = 0
DEFAULT_MAX_LENGTH = 128
BUCKET = 16
FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".txt": "txt"}


def _rows(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The file's records and the columns (keys) they have."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserError(
            f"{path}: a text source reads .csv, .tsv, .jsonl or .txt files (one text a line)"
        )
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} as UTF-8 text: {exc}") from None
    if kind == "txt":
        rows = [{"text": line.strip()} for line in raw.splitlines() if line.strip()]
        return rows, ["text"]
    if kind == "csv":
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        try:
            reader = csv.DictReader(raw.splitlines(), delimiter=delimiter)
            rows = [dict(r) for r in reader]
        except csv.Error as exc:
            raise UserError(f"cannot read {path} as CSV: {exc}") from None
        return rows, [c.strip() for c in reader.fieldnames or []]
    rows = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{path} line {number} is not JSON: {exc}") from None
        if not isinstance(record, dict):
            raise UserError(f"{path} line {number}: each line must be a JSON object")
        rows.append(record)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return rows, keys


def _column(
    path: Path, rows: list[dict[str, Any]], columns: list[str], name: str, what: str
) -> list[str]:
    if name not in columns:
        raise UserError(
            f"{path} has no column '{name}' ({', '.join(columns) or 'no columns'}); "
            f"set {what}: to the column that holds the text"
        )
    values = []
    for i, row in enumerate(rows):
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{path} row {i + 1}: column '{name}' is empty or not text")
        values.append(value)
    return values


def _label_ids(path: Path, values: list[Any], tokenizer_dir: Path | None) -> np.ndarray:
    """Labels as class indices: integers as they are; names through the model's label2id."""
    if all(
        isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit())
        for v in values
    ):
        return np.asarray([int(v) for v in values], dtype=np.int64)
    label2id: dict[str, int] = {}
    config = tokenizer_dir / "config.json" if tokenizer_dir else None
    if config is not None and config.is_file():
        label2id = json.loads(config.read_text(encoding="utf-8")).get("label2id") or {}
    unknown = sorted({str(v) for v in values} - set(label2id))
    if unknown:
        raise UserError(
            f"{path}: label(s) {unknown[:5]} are not class indices, and the model's config.json "
            f"names no such label ({', '.join(label2id) or 'it has no label2id'})"
        )
    return np.asarray([label2id[str(v)] for v in values], dtype=np.int64)


def split_rows(n: int, split: str) -> np.ndarray:
    """Row indices of a split: one fixed shuffle, then calibration, validation, evaluation."""
    if split == "all":
        return np.arange(n)
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    start = 0
    for name in ("calibration", "validation", "evaluation"):
        count = round(n * FRACTIONS[name]) if name != "evaluation" else n - start
        if name == split:
            return np.sort(order[start : start + count])
        start += count
    raise UserError(f"the text source needs split: {', '.join(SPLITS)} (got {split!r})")


@register_data_source(
    "text",
    splits=SPLITS,
    fields=(
        "path",
        "text",
        "text_pair",
        "labels",
        "max_length",
        "padding",
        "tokenizer",
        "generate",
    ),
)
def load(spec: DataSpec, base_dir: Path) -> Dataset:
    """Text files (csv, jsonl, txt) tokenized by the model's tokenizer (text:, text_pair:)."""
    from modelquant.models import hf

    path = data_file(spec, base_dir, "csv")
    if spec.tokenizer is None:
        raise UserError(
            f"data {spec.source}:{path.name} needs a tokenizer: use an hf model (its own is "
            "taken) or set tokenizer: <folder with tokenizer.json>"
        )
    tokenizer_dir = hf.model_dir(spec.tokenizer, [base_dir])
    rows, columns = _rows(path)
    if not rows:
        raise UserError(f"{path} has no rows of text")
    texts = _column(path, rows, columns, spec.text or "text", "text")
    pairs = _column(path, rows, columns, spec.text_pair, "text_pair") if spec.text_pair else None
    labels = None
    if spec.labels is not None:
        if spec.labels not in columns:
            raise UserError(
                f"{path} has no column '{spec.labels}' ({', '.join(columns)}); set labels: to "
                "the column of the class labels, or remove it"
            )
        labels = _label_ids(path, [r.get(spec.labels) for r in rows], tokenizer_dir)
    assert spec.split is not None  # the recipe requires one
    idx = split_rows(len(rows), spec.split)
    if len(idx) == 0:
        raise UserError(f"{path}: split {spec.split} has no rows ({len(rows)} in the file)")
    tok = hf.tokenizer(tokenizer_dir)
    chosen = [texts[i] for i in idx]
    chosen_pairs = [pairs[i] for i in idx] if pairs is not None else None
    chosen_labels = None if labels is None else labels[idx]
    description = f"text:{path.name}:{spec.split}"
    if spec.generate:
        if pairs is not None or labels is not None:
            raise UserError(
                f"data {path.name}: generate: makes unlabeled single texts; remove text_pair: "
                "and labels: from this entry, or generate: 0"
            )
        from modelquant.data.augment import generate_texts, vocabulary_words

        if len(chosen) < 2:
            raise UserError(f"{path}: generate: needs at least 2 texts in the split to recombine")
        words = vocabulary_words(tok)
        chosen = chosen + generate_texts(chosen, spec.generate, vocabulary=words)
        description += f"+{spec.generate} generated"
    max_length = spec.max_length or DEFAULT_MAX_LENGTH
    encoded = tok(
        chosen,
        chosen_pairs,
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    inputs = {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()}
    lengths = inputs["attention_mask"].sum(axis=1) if "attention_mask" in inputs else None
    bucket = BUCKET if spec.padding == "bucket" else None
    return Dataset(inputs, chosen_labels, description, lengths, bucket)
