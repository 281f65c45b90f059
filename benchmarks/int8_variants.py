"""INT8 flavours of the digits CNN against FP32, each timed in one process in alternating blocks.

Usage: python benchmarks/int8_variants.py [--repeats 300] [--out runs/bench-int8]

Compares modelquant's default quantize settings (QDQ, u8 activations, s8 per-channel weights,
pre-processing) with onnxruntime's own `quantize_static` defaults (QDQ, s8 activations, s8
per-tensor weights, no pre-processing) and with QOperator, per-tensor and dynamic variants, at 1
and 2 intra-op threads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from modelquant.pipeline import Pipeline
from modelquant.recipe import load_recipe

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "digits-int8.yaml"

VARIANTS: dict[str, list[str]] = {
    "modelquant default (QDQ u8/s8 per-channel)": [],
    "onnxruntime defaults (QDQ s8/s8 per-tensor)": [
        "stages.1.quantize.activations=int8",
        "stages.1.quantize.per_channel=false",
        "stages.1.quantize.preprocess=false",
    ],
    "QDQ u8/s8 per-tensor": ["stages.1.quantize.per_channel=false"],
    "QOperator u8/s8 per-channel": ["stages.1.quantize.format=qoperator"],
    "dynamic s8 weights": ["stages.1.quantize.mode=dynamic"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-int8"))
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    console = Console(width=200)
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for label, overrides in VARIANTS.items():
            recipe = load_recipe(
                RECIPE,
                [
                    *overrides,
                    f"evaluate.threads={threads}",
                    f"evaluate.repeats={args.repeats}",
                    "evaluate.batch_sizes=[1, 32, 64]",
                    "gates={}",
                ],
            )
            out = args.out / f"t{threads}-{len(rows)}"
            report = Pipeline(recipe, RECIPE, out).run()
            row = {
                "variant": label,
                "threads": threads,
                "accuracy_fp32": report.baseline.accuracy,
                "accuracy_int8": report.compressed.accuracy,
                "size_ratio": report.deltas.size_ratio,
                "speedup": {
                    bs: {"value": s.value, "ci95": list(s.ci95)}
                    for bs, s in report.deltas.speedup["cpu"].items()
                },
                "p50_ms": {
                    bs: {
                        "fp32": report.baseline.backends["cpu"].latency_ms[bs].p50,
                        "int8": report.compressed.backends["cpu"].latency_ms[bs].p50,
                    }
                    for bs in report.deltas.speedup["cpu"]
                },
            }
            rows.append(row)
            env = report.environment
    table = Table(title=f"digits CNN, INT8 vs FP32 · {env.cpu} · flags {' '.join(env.cpu_flags)}")
    for col in ("variant", "thr", "acc fp32→int8", "size", "bs1 ×", "bs32 ×", "bs64 ×"):
        table.add_column(col)
    for r in rows:
        sp = r["speedup"]
        table.add_row(
            r["variant"],
            str(r["threads"]),
            f"{r['accuracy_fp32']:.2%}→{r['accuracy_int8']:.2%}",
            f"{r['size_ratio']:.3f}",
            *(
                f"{sp[b]['value']:.2f} [{sp[b]['ci95'][0]:.2f}, {sp[b]['ci95'][1]:.2f}]"
                for b in ("1", "32", "64")
            ),
        )
    console.print(table)
    result = {
        "cpu": env.cpu,
        "cpu_flags": env.cpu_flags,
        "onnxruntime": env.onnxruntime,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_variants.json").write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out / 'int8_variants.json'}")


if __name__ == "__main__":
    main()
