"""Fixed int8 defaults vs `quantize: {mode: auto}` on three models: size, accuracy and latency at
batch 1 and a large batch, with the CPU's flags.

    PYTHONPATH=. python benchmarks/auto_mode.py [--models digits,mlp,minilm] [--repeats 400]

Models: the digits CNN (recipes/digits-int8.yaml), the tabular MLP with BatchNorm and GELU
(recipes/tabular-mlp-int8.yaml) and the packaged all-MiniLM-L6-v2 (recipes/minilm-int8-static.yaml,
needs the `hf` extra). Variants of each, built by modelquant's own pipeline from the bundled recipe:

- `old default`: what a bare int8 stage did before graph preparation: export at opset 17 without
  BatchNorm folding, static QDQ on every op type (`op_types: all`);
- `static`: today's pinned static default: BatchNorm folded, GELU as one op, compute ops only;
- `auto`: the search (the recipe's gates give the budget), its winner named.

Accuracy is on the recipe's evaluation split (test); the search scored on validation. Latency:
every variant and the FP32 baseline alternated in blocks in this one process
(`bench.time_alternating`), medians and 95 % block-bootstrap intervals of the ratio. Prints a
table and writes benchmarks/results/auto_mode.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "modelquant" / "recipes"
MODELS = {
    "digits": ("digits-int8.yaml", 32),
    "mlp": ("tabular-mlp-int8.yaml", 64),
    "minilm": ("minilm-int8-static.yaml", 8),
}
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "old default": (
        {"opset": 17, "fold_batchnorm": False},
        {"precision": "int8", "mode": "static", "op_types": "all"},
    ),
    "static": ({}, {"precision": "int8", "mode": "static"}),
    "auto": ({}, {"precision": "int8", "mode": "auto"}),
}


def variant_recipe(source: dict[str, Any], export: dict[str, Any], quantize: dict[str, Any]):  # type: ignore[no-untyped-def]
    from modelquant.recipe import Recipe

    doc = json.loads(json.dumps(source))
    stages = []
    for entry in doc["stages"]:
        if "export" in entry:
            keep = {k: v for k, v in entry["export"].items() if k not in ("opset",)}
            hf = "hf" in doc["model"]
            settings = {**keep, **({} if hf else export)}
            stages.append({"export": settings})
        elif "quantize" in entry:
            stages.append({"quantize": quantize})
        else:
            stages.append(entry)
    doc["stages"] = stages
    doc["gates"] = {k: v for k, v in doc.get("gates", {}).items() if k != "min_speedup"}
    return Recipe.model_validate(doc)


def run_model(name: str, repeats: int, work: Path) -> dict[str, Any]:

    from modelquant.backends import get_backend
    from modelquant.backends.bench import feeds_from, measure_latency
    from modelquant.evaluator import model_outputs, score
    from modelquant.models import onnx_file
    from modelquant.pipeline import Pipeline
    from modelquant.tasks import get_task

    file, large = MODELS[name]
    source = yaml.safe_load((RECIPES / file).read_text())
    results: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    baseline: Path | None = None
    pipeline = None
    for variant, (export, quantize) in VARIANTS.items():
        recipe = variant_recipe(source, export, quantize)
        out = work / name / variant.replace(" ", "-")
        pipeline = Pipeline(recipe, RECIPES / file, out)
        result = pipeline.run_stages()
        assert result.baseline.onnx_path is not None
        baseline = baseline or result.baseline.onnx_path
        paths[variant] = result.compressed
        details = result.state.lineage[-1].details
        auto = details.get("auto")
        results[variant] = {
            "scheme": details.get("scheme"),
            "winner": auto["winner"] if auto else None,
            "reason": auto["reason"] if auto else None,
            "size_ratio": onnx_file.size_bytes(result.compressed) / onnx_file.size_bytes(baseline),
        }
    assert baseline is not None and pipeline is not None
    task = get_task(pipeline.recipe.metric_task)
    data = pipeline.plan.data("evaluation")
    cpu = get_backend("cpu")
    reference = model_outputs(baseline, data, cpu, task=task) if task.needs_reference else None
    float_metric = score(baseline, data, task=task, reference=reference)
    for variant, path in paths.items():
        metric = score(path, data, task=task, reference=reference)
        results[variant].update(metric=metric, drop=float_metric - metric)
    ev = pipeline.recipe.evaluate
    threads = ev.threads
    settings = ev.model_copy(
        update={
            "backends": ["cpu"],
            "batch_sizes": [1, large],
            "repeats": repeats,
            "warmup": max(10, repeats // 10),
            "block": min(ev.block, repeats),
        }
    )
    latency = measure_latency(
        {"baseline": baseline, **paths},
        cpu,
        [1, large],
        feeds_from(data),
        settings,
    )
    for variant in paths:
        for bs, speed in latency.role_speedups[variant].items():
            results[variant].setdefault("speedup", {})[bs] = [speed.value, *speed.ci95]
            results[variant].setdefault("ms", {})[bs] = latency.stats[variant][bs].p50
    results["fp32"] = {"ms": {bs: st.p50 for bs, st in latency.stats["baseline"].items()}}
    results["fp32"].update(metric=float_metric, metric_name=task.metric.name, threads=threads)
    results["batch_sizes"] = [1, large]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,mlp,minilm")
    parser.add_argument("--repeats", type=int, default=400, help="timed runs per model and batch")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here (cached)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/auto_mode.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from modelquant.environment import cpu_description

    cpu, flags = cpu_description()
    doc: dict[str, Any] = {"cpu": cpu, "cpu_flags": flags, "repeats": args.repeats, "models": {}}
    with tempfile.TemporaryDirectory(prefix="mq-auto-") as tmp:
        work = args.work or Path(tmp)
        for name in args.models.split(","):
            doc["models"][name] = run_model(name, args.repeats, work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"CPU: {cpu} ({', '.join(flags)})")
    print(
        "| model | variant | scheme | size | metric | drop pt | bs1 speedup | large-batch speedup |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, res in doc["models"].items():
        large = res["batch_sizes"][1]
        for variant in VARIANTS:
            r = res[variant]
            s1, sl = r["speedup"]["1"], r["speedup"][str(large)]
            scheme = r["winner"] or r["scheme"]
            print(
                f"| {name} | {variant} | {scheme} | {r['size_ratio']:.3f}x | {r['metric']:.4f} | "
                f"{r['drop'] * 100:+.2f} | {s1[0]:.2f}x [{s1[1]:.2f}, {s1[2]:.2f}] | "
                f"bs{large} {sl[0]:.2f}x [{sl[1]:.2f}, {sl[2]:.2f}] |"
            )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
