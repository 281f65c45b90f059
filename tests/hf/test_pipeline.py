"""A Hugging Face model through the whole pipeline, on a two-layer BERT the tests build: optimum's
export checked against torch, quantization, the embedding metrics and their default gate."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import yaml
from typer.testing import CliRunner

from modelquant.cli import app

runner = CliRunner()


def write(tmp_path: Path, model: dict, data_path: Path, **changes: object) -> Path:
    entry = {"source": "text", "path": str(data_path), "text": "sentence", "max_length": 32}
    recipe = {
        "name": "tiny-hf",
        "model": model,
        "data": {
            "validation": {**entry, "split": "validation"},
            "evaluation": {**entry, "split": "evaluation", "batch_size": 4},
        },
        "stages": [{"export": {}}, {"quantize": {"precision": "int8", "mode": "dynamic"}}],
        "evaluate": {"batch_sizes": [2], "repeats": 4, "warmup": 1, "block": 2, "threads": 1},
        **changes,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run(path: Path, out: Path) -> tuple[int, dict, str]:
    result = runner.invoke(app, ["compress", str(path), "--out", str(out)])
    report = out / "report.json"
    return (
        result.exit_code,
        json.loads(report.read_text()) if report.exists() else {},
        result.output,
    )


def test_feature_extraction_end_to_end(
    tiny_bert: Path, sentences_csv: Path, tmp_path: Path
) -> None:
    code, report, output = run(
        write(tmp_path, {"hf": str(tiny_bert)}, sentences_csv), tmp_path / "o"
    )
    assert code == 0, output
    export = report["stages"][0]["details"]
    assert export["exporter"] == "optimum"
    assert 0 <= export["max_abs_diff"] <= export["atol"]
    graph = onnx.load(str(tmp_path / "o" / report["artifacts"]["baseline"]))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    dims = [d.dim_param for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch_size", "sequence_length"]  # dynamic batch and sequence axes
    comp = report["compressed"]
    assert comp["metric"] == "cosine" and report["baseline"]["accuracy"] == 1.0
    s = comp["similarity"]
    assert s["samples"] == 10
    assert -1 <= s["cosine_min"] <= s["cosine_p5"] <= s["cosine_mean"] == comp["accuracy"] <= 1
    assert 0 <= s["neighbour_agreement"] <= 1
    # No accuracy gate in the recipe: feature extraction gets min_cosine at its default.
    (gate,) = report["gates"]
    assert gate["name"] == "min_cosine" and gate["threshold"] == 0.99
    assert "default gate" in gate["detail"]
    assert "cosine p5 (cpu)" in output and "same nearest neighbour" in output


def test_a_cosine_gate_fails_with_exit_1(
    tiny_bert: Path, sentences_csv: Path, tmp_path: Path
) -> None:
    path = write(tmp_path, {"hf": str(tiny_bert)}, sentences_csv, gates={"min_cosine": 1.0})
    code, report, output = run(path, tmp_path / "o")
    assert code == 1, output
    assert report["status"] == "gate_failed"
    assert [g["name"] for g in report["gates"] if not g["passed"]] == ["min_cosine"]


def test_text_classification_scores_top1_on_the_labels(
    tiny_classifier: Path, sentences_csv: Path, tmp_path: Path
) -> None:
    path = write(
        tmp_path, {"hf": str(tiny_classifier), "task": "text-classification"}, sentences_csv
    )
    recipe = yaml.safe_load(path.read_text())
    for entry in recipe["data"].values():
        entry["labels"] = "label"
    path.write_text(yaml.safe_dump(recipe))
    code, report, output = run(path, tmp_path / "o")
    assert code == 0, output
    assert report["compressed"]["metric"] == "top1"
    assert report["compressed"]["similarity"] is None
    graph = onnx.load(str(tmp_path / "o" / report["artifacts"]["baseline"]))
    assert [o.name for o in graph.graph.output] == ["logits"]


def test_a_cosine_gate_on_a_classifier_is_bad_input(
    tiny_classifier: Path, sentences_csv: Path, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        {"hf": str(tiny_classifier), "task": "text-classification"},
        sentences_csv,
        gates={"min_cosine": 0.9},
    )
    result = runner.invoke(app, ["compress", str(path), "--dry-run"])
    assert result.exit_code == 2
    assert "gates.min_cosine measures embeddings" in result.output
