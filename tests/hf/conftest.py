"""Small Hugging Face folders built by the tests (a two-layer BERT with MiniLM's tokenizer), so
that the hf source, the text data and the optimum export run in seconds; the packaged MiniLM is
for the slow tests."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from modelquant.models.hf import go_offline, packaged_path

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
SENTENCES = [
    "The kettle boiled while the rain kept falling on the roof.",
    "Our train to the coast left twelve minutes late on Sunday.",
    "How many grams of flour go into a loaf of rye bread?",
    "The goalkeeper saved two penalties in the final.",
    "Restart the build server after the disk fills up.",
    "Tomatoes need full sun and regular watering in July.",
    "The comet will be visible low in the western sky tonight.",
    "Interest rates rose by a quarter point this morning.",
    "Please reset my password, the link in the email expired.",
    "The court adjourned the hearing until next Thursday.",
    "A cat slept on the warm windowsill all afternoon.",
    "The orchestra tuned up before the second movement began.",
    "Bring a jacket: the forecast says wind and showers.",
    "She fixed the off-by-one error in the pagination code.",
    "The museum reopened its Roman coin collection.",
    "Take two tablets after meals for five days.",
    "The ferry timetable changes in the winter months.",
    "He planted garlic cloves in rows twenty centimetres apart.",
    "Our invoices are due thirty days after delivery.",
    "The dog waited at the door for the children to come home.",
]


def build_tiny_bert(folder: Path, *, labels: int | None = None) -> Path:
    """A randomly initialized two-layer BERT (hidden 32) saved with safetensors, plus MiniLM's
    tokenizer files; `labels`: a sequence-classification head with that many classes."""
    go_offline()
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    if labels is not None:
        config.num_labels = labels
        config.id2label = {i: f"class{i}" for i in range(labels)}
        config.label2id = {f"class{i}": i for i in range(labels)}
        model = BertForSequenceClassification(config)
    else:
        model = BertModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    source = packaged_path("all-MiniLM-L6-v2")
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-classifier"), labels=3)


@pytest.fixture(scope="session")
def sentences_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "sentences.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "label"])
        for i, text in enumerate(SENTENCES):
            writer.writerow([text, f"class{i % 3}"])
    return path
