"""The text data source: files read in three formats, fixed disjoint splits, the model's own
tokenizer, sentence pairs, labels by name, bucketed batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelquant.data import load_dataset
from modelquant.data.text import split_rows
from modelquant.errors import UserError
from modelquant.recipe import DataSpec
from tests.hf.conftest import SENTENCES


def spec(path: Path, tokenizer: Path, **fields: object) -> DataSpec:
    return DataSpec(source="text", path=path, tokenizer=str(tokenizer), **fields)  # type: ignore[arg-type]


def test_splits_are_disjoint_and_cover_every_row() -> None:
    parts = {
        s: set(split_rows(600, s).tolist()) for s in ("calibration", "validation", "evaluation")
    }
    assert [len(p) for p in parts.values()] == [180, 120, 300]
    assert set().union(*parts.values()) == set(range(600))
    assert not parts["calibration"] & parts["evaluation"]
    assert not parts["validation"] & parts["evaluation"]
    # Fixed: the same rows every time, whatever the recipe seed.
    assert split_rows(600, "evaluation").tolist() == split_rows(600, "evaluation").tolist()


def test_csv_is_tokenized_by_the_given_tokenizer(tiny_bert: Path, sentences_csv: Path) -> None:
    data = load_dataset(
        spec(sentences_csv, tiny_bert, text="sentence", split="all", max_length=24), Path()
    )
    assert set(data.inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert data.inputs["input_ids"].shape == (len(SENTENCES), 24)
    assert data.inputs["input_ids"].dtype == np.int64
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    first = tok(SENTENCES[0])["input_ids"]
    assert data.inputs["input_ids"][0, : len(first)].tolist() == first
    assert data.inputs["attention_mask"][0].sum() == len(first)
    assert data.labels is None  # no labels: asked for


def test_jsonl_pairs_and_named_labels(tiny_classifier: Path, tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"a": "The cat sat.", "b": "A cat was sitting.", "y": "class1"},
        {"a": "Rain tomorrow.", "b": "Stocks fell.", "y": "class2"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_dataset(
        spec(path, tiny_classifier, text="a", text_pair="b", labels="y", split="all"), Path()
    )
    assert data.labels is not None and data.labels.tolist() == [1, 2]  # config.json's label2id
    assert data.inputs["token_type_ids"][0].max() == 1  # the second text is segment 1


def test_labels_the_model_does_not_know(tiny_classifier: Path, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("text,y\nhello there,positive\n")
    with pytest.raises(UserError, match=r"label\(s\) \['positive'\]"):
        load_dataset(spec(path, tiny_classifier, labels="y", split="all"), Path())


def test_plain_text_one_sample_a_line(tiny_bert: Path, tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    path.write_text("first line\n\nsecond line\n")
    assert len(load_dataset(spec(path, tiny_bert, split="all"), Path())) == 2


def test_bucketed_batches_are_cut_to_their_longest_sample(
    tiny_bert: Path, sentences_csv: Path
) -> None:
    data = load_dataset(
        spec(sentences_csv, tiny_bert, text="sentence", split="all", padding="bucket"), Path()
    )
    assert data.inputs["input_ids"].shape[1] == 128  # stored at max_length
    lengths = data.inputs["attention_mask"].sum(axis=1)
    for start, (batch, _) in zip(range(0, len(data), 4), data.batches(4), strict=True):
        longest = int(lengths[start : start + 4].max())
        assert batch["input_ids"].shape[1] == -(-longest // 16) * 16
        assert batch["attention_mask"][:, :longest].sum() == lengths[start : start + 4].sum()
    # Calibration and timing keep the fixed length.
    assert {b["input_ids"].shape[1] for b, _ in data.batches(4, bucketed=False)} == {128}
    assert data.sample_batch(8)["input_ids"].shape == (8, 128)


def test_fixed_padding_keeps_max_length(tiny_bert: Path, sentences_csv: Path) -> None:
    data = load_dataset(spec(sentences_csv, tiny_bert, text="sentence", split="all"), Path())
    assert {b["input_ids"].shape[1] for b, _ in data.batches(4)} == {128}


def test_no_tokenizer_without_an_hf_model(sentences_csv: Path) -> None:
    entry = DataSpec(source="text", path=sentences_csv, split="all")
    with pytest.raises(UserError, match="needs a tokenizer"):
        load_dataset(entry, Path())


def test_an_empty_text_cell_is_named(tiny_bert: Path, tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('text\nhello\n""\n')
    with pytest.raises(UserError, match="row 2: column 'text' is empty"):
        load_dataset(spec(path, tiny_bert, split="all"), Path())


def test_generated_text_is_deterministic_and_made_only_of_the_splits_words(
    tiny_bert: Path, sentences_csv: Path
) -> None:
    from modelquant.data.augment import KINDS, VOCABULARY_KINDS, generate_texts

    source = [SENTENCES[i] for i in split_rows(len(SENTENCES), "calibration")]
    held_out = [SENTENCES[i] for i in split_rows(len(SENTENCES), "evaluation")]
    texts = generate_texts(source, 70)
    assert len(texts) == 70 and texts == generate_texts(source, 70)
    assert texts != generate_texts(source, 70, seed=1)
    assert not set(texts) & set(source)  # new texts, not copies
    split_words = {w.strip(".,;:?!—-") for s in source for w in s.split()}
    frame_words = {
        "can",
        "you",
        "tell",
        "me",
        "about",
        "i",
        "read",
        "that",
        "according",
        "to",
        "the",
        "notes",
        "question",
        "note",
        "self",
        "is",
        "it",
        "true",
        "someone",
        "said",
        "and",
        "meanwhile",
        "summary",
        "but",
        "because",
        "",
    }
    only_held_out = (
        {w.strip(".,;:?!—-").lower() for s in held_out for w in s.split()}
        - {w.lower() for w in split_words}
        - frame_words
    )
    used = {w.strip(".,;:?!—-").lower() for t in texts for w in t.split()}
    assert not used & only_held_out  # no word that only the held-out sentences have
    # With a vocabulary, two more kinds; every kind is dealt out in turn.
    with_vocab = generate_texts(source, 70, vocabulary=["zebra", "quartz"])
    assert len(KINDS + VOCABULARY_KINDS) == 7 and sum("zebra" in t for t in with_vocab) >= 5
    # Through the recipe: the split's rows, then the generated ones, named in the description.
    data = load_dataset(
        spec(sentences_csv, tiny_bert, text="sentence", split="calibration", generate=25), Path()
    )
    assert len(data) == len(source) + 25
    assert data.description.endswith("calibration+25 generated")


def test_generating_labelled_or_paired_rows_is_bad_input(tiny_bert: Path, tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"a": s, "b": s, "y": 0}) for s in SENTENCES))
    with pytest.raises(UserError, match="generate: makes unlabeled single texts"):
        load_dataset(
            spec(path, tiny_bert, text="a", labels="y", split="calibration", generate=5), Path()
        )
