"""Accuracy-aware fallback against onnxruntime's quantize_static defaults, on two models.

Usage: python benchmarks/per_layer.py [--repeats 200] [--out runs/bench-per-layer]

For the digits CNN (where all-INT8 loses nothing) and the breast_cancer tabular MLP (where it
loses 12-17 points), compares
  (a) onnxruntime's `quantize_static` defaults on every layer: QDQ, s8 activations, s8 per-tensor
      weights, min-max calibration, no pre-processing;
  (b) modelquant's quantize stage with `accuracy_budget: 0.005`, `fallback: auto`: its default
      INT8 (u8/s8 per-channel, pre-processed) and rounds that return the most sensitive layers to
      16-bit activations, then float.
Each row is one `compress` run: test accuracy (the evaluation data, never used for tuning),
the drop on validation the fallback judged, size against FP32, CPU speedup against FP32 (timed
in that run, alternated in blocks, median with its 95 % interval) and the rounds taken.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from modelquant.environment import environment
from modelquant.pipeline import Pipeline
from modelquant.recipe import load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "modelquant" / "recipes"
MODELS = {
    "digits CNN": RECIPES / "digits-int8.yaml",
    "breast_cancer MLP": RECIPES / "breast-cancer-fallback.yaml",
}
ORT_DEFAULTS = [
    "stages.1.quantize.activations=int8",
    "stages.1.quantize.per_channel=false",
    "stages.1.quantize.preprocess=false",
    "stages.1.quantize.accuracy_budget=null",
]
FALLBACK = [
    "stages.1.quantize.accuracy_budget=0.005",
    "stages.1.quantize.fallback=auto",
    "stages.1.quantize.max_rounds=4",
]
VARIANTS = {
    "(a) quantize_static defaults": ORT_DEFAULTS,
    "(b) modelquant fallback 0.5 pt": FALLBACK,
}


def row(model: str, variant: str, report: Any) -> dict[str, Any]:
    quantize = next(s for s in report.stages if s.name == "quantize")
    fallback = quantize.details.get("fallback") or {}
    rounds = fallback.get("rounds") or []
    kept = rounds[fallback["kept_round"]] if rounds else None
    speed = report.deltas.speedup.get("cpu", {})
    return {
        "model": model,
        "variant": variant,
        "test_float": report.baseline.accuracy,
        "test_quantized": report.compressed.accuracy,
        "test_drop_pt": (report.baseline.accuracy - report.compressed.accuracy) * 100,
        "validation_drop_pt": kept["drop"] * 100 if kept else None,
        "size_ratio": report.deltas.size_ratio,
        "speedup": {b: {"value": s.value, "ci95": list(s.ci95)} for b, s in speed.items()},
        "rounds_taken": fallback.get("rounds_taken"),
        "kept_higher": fallback.get("kept_higher", {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-per-layer"))
    args = parser.parse_args()
    console = Console(width=200)
    rows = []
    for model, recipe_path in MODELS.items():
        for variant, overrides in VARIANTS.items():
            recipe = load_recipe(
                recipe_path,
                [
                    *overrides,
                    f"evaluate.repeats={args.repeats}",
                    "evaluate.threads=1",
                    "gates={}",
                ],
            )
            out = args.out / f"{recipe.name}-{len(rows)}"
            report = Pipeline(recipe, recipe_path, out).run()
            rows.append(row(model, variant, report))
    table = Table(title="per-layer fallback vs quantize_static defaults (CPU, 1 thread)")
    for col in (
        "model",
        "variant",
        "test acc",
        "test drop",
        "val drop",
        "size",
        "speedup",
        "rounds",
    ):
        table.add_column(col)
    for r in rows:
        speed = ", ".join(
            f"b{b}: {s['value']:.2f}x [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]"
            for b, s in r["speedup"].items()
        )
        table.add_row(
            r["model"],
            r["variant"],
            f"{r['test_quantized']:.2%}",
            f"{r['test_drop_pt']:.2f} pt",
            "" if r["validation_drop_pt"] is None else f"{r['validation_drop_pt']:.2f} pt",
            f"{r['size_ratio']:.3f}x",
            speed,
            "" if r["rounds_taken"] is None else str(r["rounds_taken"]),
        )
    console.print(table)
    env = environment()
    result = {
        "cpu": env.cpu,
        "cpu_flags": env.cpu_flags,
        "cores": env.cores,
        "onnxruntime": env.onnxruntime,
        "repeats": args.repeats,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "per_layer.json").write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out / 'per_layer.json'}")


if __name__ == "__main__":
    main()
