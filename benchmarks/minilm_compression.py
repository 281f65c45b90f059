"""all-MiniLM-L6-v2 compressed four ways: INT8 only, heads/FFN pruned + INT8, a 3-layer student
distilled by layer drop + INT8 (recipes/minilm-eighth.yaml), against FP32: size, cosine to FP32
(mean / min), nearest-neighbour agreement, latency at batch 1 and 8 x 128 tokens, training time.

    PYTHONPATH=. python benchmarks/minilm_compression.py [--repeats 40] [--work DIR]

Every variant is built by modelquant's own pipeline from recipes/minilm-eighth.yaml with its
stages swapped (the same data, the same quantize stage, the same training budget for pruning's
fine-tuning as for the distillation); `--work` keeps the runs (cached) for a second call.
Similarity is on the recipe's evaluation split (300 held-out sentences no training saw). Latency:
all variants and FP32 alternated in blocks in this one process (`bench.measure_latency`), at the
recipe's threads, medians with 95 % block-bootstrap intervals of the ratio to FP32. Prints a
Markdown table and writes benchmarks/results/minilm_compression.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "modelquant" / "recipes" / "minilm-eighth.yaml"
BATCH_SIZES = [1, 8]


def variants(source: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Variant name -> its stages, from the recipe's (distill, ..., export, quantize)."""
    stages = source["stages"]
    distill = next(s["distill"] for s in stages if "distill" in s)
    export = next(s for s in stages if "export" in s)
    quantize = next(s for s in stages if "quantize" in s)
    int8_only = {"quantize": {"precision": "int8", "mode": "dynamic", "per_channel": True}}
    prune = {
        "prune": {
            "method": "structured",
            "heads": 0.5,
            "ffn": 0.5,
            "importance": "taylor",
            "finetune": copy.deepcopy(distill["finetune"]),
        }
    }
    return {
        "int8 only": [export, int8_only],
        "pruned 50/50 + int8": [prune, export, quantize],
        "distilled + int8 (recipe)": stages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40, help="timed runs per model and batch")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here (cached)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/minilm_compression.json"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from modelquant.backends import get_backend
    from modelquant.backends.bench import feeds_from, measure_latency
    from modelquant.environment import cpu_description
    from modelquant.evaluator import model_outputs
    from modelquant.metrics import cosine_stats, neighbour_agreement
    from modelquant.models import onnx_file
    from modelquant.pipeline import Pipeline
    from modelquant.recipe import Recipe
    from modelquant.tasks import get_task

    cpu_name, flags = cpu_description()
    source = yaml.safe_load(RECIPE.read_text())
    rows: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    baseline: Path | None = None
    pipeline = None
    with tempfile.TemporaryDirectory(prefix="mq-minilm-") as tmp:
        work = args.work or Path(tmp)
        for name, stages in variants(source).items():
            doc = {**copy.deepcopy(source), "stages": stages, "gates": {}}
            pipeline = Pipeline(Recipe.model_validate(doc), RECIPE, work / name.split()[0])
            result = pipeline.run_stages()
            assert result.baseline.onnx_path is not None
            baseline = baseline or result.baseline.onnx_path
            paths[name] = result.compressed
            rows[name] = {
                "size_bytes": onnx_file.size_bytes(result.compressed),
                "params": onnx_file.param_counts(result.compressed)[0],
                "train_seconds": round(
                    sum(r.seconds for r in result.state.lineage if r.name in ("distill", "prune")),
                    1,
                ),
                "stages": [r.name for r in result.state.lineage],
            }
        assert baseline is not None and pipeline is not None
        task = get_task(pipeline.recipe.metric_task)
        data = pipeline.plan.data("evaluation")
        cpu = get_backend("cpu")
        reference = model_outputs(baseline, data, cpu, task=task)
        base_size = onnx_file.size_bytes(baseline)
        rows["fp32"] = {"size_bytes": base_size, "params": onnx_file.param_counts(baseline)[0]}
        for name, path in paths.items():
            out = model_outputs(path, data, cpu, task=task)
            stats = cosine_stats(out, reference)
            rows[name].update(
                cosine_mean=stats.mean,
                cosine_min=stats.min,
                neighbour_agreement=neighbour_agreement(out, reference),
            )
        ev = pipeline.recipe.evaluate
        settings = ev.model_copy(
            update={
                "backends": ["cpu"],
                "batch_sizes": BATCH_SIZES,
                "repeats": args.repeats,
                "warmup": max(3, args.repeats // 10),
                "block": min(ev.block, args.repeats),
            }
        )
        latency = measure_latency(
            {"baseline": baseline, **paths}, cpu, BATCH_SIZES, feeds_from(data), settings
        )
    rows["fp32"]["ms"] = {str(bs): st.p50 for bs, st in latency.stats["baseline"].items()}
    for name in paths:
        rows[name]["ms"] = {str(bs): st.p50 for bs, st in latency.stats[name].items()}
        rows[name]["speedup"] = {
            str(bs): [s.value, *s.ci95] for bs, s in latency.role_speedups[name].items()
        }
    for row in rows.values():
        row["size_ratio"] = row["size_bytes"] / base_size
    doc_out = {
        "cpu": cpu_name,
        "cpu_flags": flags,
        "threads": ev.threads,
        "tokens": data.inputs["input_ids"].shape[1],
        "repeats": args.repeats,
        "evaluation": data.description,
        "variants": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc_out, indent=2) + "\n")
    print(f"CPU: {cpu_name} ({', '.join(flags)}); {ev.threads} threads; {doc_out['tokens']} tokens")
    print(
        "| variant | size | params | cosine mean / min | same neighbour | batch 1 | batch 8 | "
        "training s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    fp = rows["fp32"]
    print(
        f"| FP32 | {fp['size_bytes'] / 1e6:.1f} MB (1x) | {fp['params'] / 1e6:.2f} M | 1 / 1 | "
        f"100 % | {fp['ms']['1']:.1f} ms | {fp['ms']['8']:.0f} ms | |"
    )
    for name in paths:
        r = rows[name]
        s1, s8 = r["speedup"]["1"], r["speedup"]["8"]
        print(
            f"| {name} | {r['size_bytes'] / 1e6:.1f} MB ({r['size_ratio']:.3f}x) | "
            f"{r['params'] / 1e6:.2f} M | {r['cosine_mean']:.4f} / {r['cosine_min']:.4f} | "
            f"{r['neighbour_agreement']:.1%} | {s1[0]:.2f}x [{s1[1]:.2f}, {s1[2]:.2f}] | "
            f"{s8[0]:.2f}x [{s8[1]:.2f}, {s8[2]:.2f}] | {r['train_seconds'] or ''} |"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
