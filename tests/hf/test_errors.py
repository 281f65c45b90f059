"""Bad Hugging Face input is exit 2 with one line naming the fix (never a traceback or a
download attempt): a folder that is no model, a missing tokenizer, an unknown task, a text file
without the named column, pickled weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from modelquant.cli import app

runner = CliRunner()


def recipe(tmp_path: Path, model: dict, data_path: Path, text: str = "sentence") -> Path:
    entry = {"source": "text", "path": str(data_path), "text": text}
    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "hf-errors",
                "model": model,
                "data": {
                    "validation": {**entry, "split": "validation"},
                    "evaluation": {**entry, "split": "evaluation"},
                },
                "stages": [{"export": {}}, {"quantize": {"precision": "int8", "mode": "dynamic"}}],
            }
        )
    )
    return path


def bad_input(path: Path, tmp_path: Path) -> str:
    result = runner.invoke(app, ["compress", str(path), "--dry-run", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def copy_model(tiny_bert: Path, tmp_path: Path, leave_out: tuple[str, ...] = ()) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder, ignore=shutil.ignore_patterns(*leave_out))
    return folder


def test_the_good_folder_passes_the_dry_run(
    tiny_bert: Path, sentences_csv: Path, tmp_path: Path
) -> None:
    path = recipe(tmp_path, {"hf": str(tiny_bert)}, sentences_csv)
    result = runner.invoke(app, ["compress", str(path), "--dry-run", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "(hf, feature-extraction)" in result.output
    assert "text:sentences.csv:evaluation, 10 samples" in result.output


def test_a_folder_that_is_not_a_hugging_face_model(sentences_csv: Path, tmp_path: Path) -> None:
    folder = tmp_path / "just-files"
    folder.mkdir()
    (folder / "weights.onnx").write_bytes(b"\0")
    line = bad_input(recipe(tmp_path, {"hf": str(folder)}, sentences_csv), tmp_path)
    assert "is not a Hugging Face model folder (no config.json)" in line
    assert "save_pretrained()" in line


def test_a_name_that_is_neither_a_folder_nor_packaged_is_not_downloaded(
    sentences_csv: Path, tmp_path: Path
) -> None:
    line = bad_input(recipe(tmp_path, {"hf": "bert-base-uncased"}, sentences_csv), tmp_path)
    assert "modelquant downloads nothing" in line
    assert "all-MiniLM-L6-v2" in line


def test_a_missing_tokenizer(tiny_bert: Path, sentences_csv: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_bert, tmp_path, ("vocab.txt", "tokenizer*", "special_tokens_map.json"))
    line = bad_input(recipe(tmp_path, {"hf": str(folder)}, sentences_csv), tmp_path)
    assert "has no tokenizer" in line
    assert "tokenizer.save_pretrained(folder)" in line


@pytest.mark.parametrize(
    ("task", "says"),
    [
        ("feature-extractor", "unknown task 'feature-extractor'"),
        ("question-answering", "unknown task 'question-answering'"),
    ],
)
def test_an_unknown_task(
    tiny_bert: Path, sentences_csv: Path, tmp_path: Path, task: str, says: str
) -> None:
    line = bad_input(
        recipe(tmp_path, {"hf": str(tiny_bert), "task": task}, sentences_csv), tmp_path
    )
    assert says in line
    assert "feature-extraction or text-classification" in line


def test_a_text_file_without_the_named_column(
    tiny_bert: Path, sentences_csv: Path, tmp_path: Path
) -> None:
    line = bad_input(recipe(tmp_path, {"hf": str(tiny_bert)}, sentences_csv, text="body"), tmp_path)
    assert "has no column 'body' (sentence, label)" in line
    assert "set text: to the column that holds the text" in line


def test_pickled_weights_are_refused(tiny_bert: Path, sentences_csv: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_bert, tmp_path, ("*.safetensors",))
    (folder / "pytorch_model.bin").write_bytes(b"not even a pickle")
    line = bad_input(recipe(tmp_path, {"hf": str(folder)}, sentences_csv), tmp_path)
    assert "refused" in line and "model.safetensors" in line


def test_task_goes_with_hf_only(sentences_csv: Path, tmp_path: Path) -> None:
    line = bad_input(
        recipe(tmp_path, {"onnx": "model.onnx", "task": "feature-extraction"}, sentences_csv),
        tmp_path,
    )
    assert "'task' goes with 'hf'" in line


def test_matmul_weights_only_is_refused_where_onnxruntime_ignores_it() -> None:
    from pydantic import ValidationError

    from modelquant.stages.quantize import QuantizeConfig

    with pytest.raises(ValidationError, match="only format qoperator reads"):
        QuantizeConfig(precision="int8", matmul_weights_only=True)
    QuantizeConfig(precision="int8", format="qoperator", matmul_weights_only=True)
