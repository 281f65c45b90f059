"""Per-layer INT8 sensitivity of the breast cancer MLP, measured with the quantize stage of the
bundled recipe `breast-cancer-int8` and scored on val and test.

Usage: python -m modelquant.examples.breast_cancer.sensitivity [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "breast-cancer-int8.yaml"
SPLITS = {"val": "validation", "test": "evaluation"}


def quantize_and_score(overrides: list[dict[str, Any]], out: Path) -> dict[str, float]:
    """Run the recipe's export and quantize stages with these layer rules (`overrides`, first
    match wins) into `out`; accuracy of the float baseline and the quantized model on val and
    test, keyed `float.val`, `int8.val`, `float.test`, `int8.test`."""
    import yaml

    from modelquant.evaluator import score
    from modelquant.pipeline import Pipeline
    from modelquant.recipe import Recipe

    source = yaml.safe_load(RECIPE.read_text())
    quantize = next(s["quantize"] for s in source["stages"] if "quantize" in s)
    quantize["overrides"] = overrides
    pipeline = Pipeline(Recipe.model_validate(source), RECIPE, out)
    result = pipeline.run_stages()
    assert result.baseline.onnx_path is not None
    scores = {}
    for split, role in SPLITS.items():
        data = pipeline.plan.data(role)
        scores[f"float.{split}"] = score(result.baseline.onnx_path, data)
        scores[f"int8.{split}"] = score(result.compressed, data)
    return scores


def layer_names(out: Path) -> list[str]:
    """The nodes of the graph the quantize stage works on (after onnxruntime's pre-processing)."""
    import onnx

    preprocessed = next(out.rglob("preprocessed.onnx"))
    return [n.name for n in onnx.load(str(preprocessed)).graph.node]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="output folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mq-sensitivity-") as tmp:
        out = args.out or Path(tmp)

        def row(label: str, rules: list[dict[str, Any]]) -> None:
            s = quantize_and_score(rules, out)
            drops = [100 * (s[f"float.{k}"] - s[f"int8.{k}"]) for k in SPLITS]
            print(f"{label:52s} {drops[0]:+7.2f} {drops[1]:+7.2f}", flush=True)

        s = quantize_and_score([], out)
        print(f"float accuracy: val {s['float.val']:.2%}, test {s['float.test']:.2%}")
        print(f"{'accuracy drop in points (float - quantized)':52s} {'val':>7s} {'test':>7s}")
        row("all INT8", [])
        for name in layer_names(out):
            row(f"{name} in fp32, the rest INT8", [{"match": name, "precision": "fp32"}])
            row(f"{name} in w8a16, the rest INT8", [{"match": name, "precision": "w8a16"}])
            row(
                f"{name} alone INT8, the rest fp32",
                [{"match": name, "precision": "int8"}, {"match": "re:.*", "precision": "fp32"}],
            )
        row("all w8a16", [{"match": "re:.*", "precision": "w8a16"}])


if __name__ == "__main__":
    main()
