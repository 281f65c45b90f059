"""FP8 (E4M3FN) scale choices on the digits CNN: accuracy drop on val (where the default is
chosen) and test (what is reported), output SQNR against FP32, and the CPU latency ratio.

Usage: python benchmarks/fp8_scales.py [--repeats 100] [--seeds 2] [--out runs/bench-fp8]

Each modelquant row runs recipes/digits-fp8.yaml with `quantize.fp8` overridden. The first row
is onnxruntime's FP8 as it comes: `quantize_static` with its only accepted calibration
(Distribution), on the same pre-processed graph, without modelquant's graph fixes. FP8 on the
CPU EP is emulated (casts around FP32 kernels): the latency column is a slowdown, not a result.

One image is 0.37 point of val and 0.22 of test, so on one model every sane choice ties; `--seeds
N` also trains N more digits CNNs and N half-width ones (seeded, about 15 s each, kept under
--out) and summarises each choice over all of them on val alone: mean and worst SQNR, mean and
worst accuracy drop.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from modelquant.backends import get_backend
from modelquant.data.digits import load
from modelquant.evaluator import model_outputs
from modelquant.pipeline import Pipeline
from modelquant.recipe import load_recipe

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "digits-fp8.yaml"

VARIANTS: dict[str, list[str]] = {
    "ort scales (std-based), graph fixed": ["stages.1.quantize.fp8.scales=ort"],
    "absmax, per-tensor (default)": [],
    "absmax, per-channel": ["stages.1.quantize.fp8.per_channel=true"],
    "mse, per-tensor": ["stages.1.quantize.fp8.scales=mse"],
    "mse, per-channel": [
        "stages.1.quantize.fp8.scales=mse",
        "stages.1.quantize.fp8.per_channel=true",
    ],
    "percentile 99.99, per-tensor": [
        "stages.1.quantize.fp8.scales=percentile",
        "stages.1.quantize.fp8.percentile=99.99",
    ],
    "percentile 99.999, per-tensor": ["stages.1.quantize.fp8.scales=percentile"],
}


def outputs(path: Path) -> dict[str, np.ndarray]:
    cpu = get_backend("cpu")
    return {s: model_outputs(path, load(s), cpu, threads=1) for s in ("val", "test")}


def compare(base: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, Any]:
    """Accuracy drop (points) and SQNR (dB) of `got` against the FP32 outputs, per split."""
    row: dict[str, Any] = {}
    for split, ref in base.items():
        labels = load(split).labels
        assert labels is not None
        out = got[split]
        acc_ref = float(np.mean(ref.argmax(1) == labels))
        acc = float(np.mean(out.argmax(1) == labels))
        row[split] = {
            "accuracy": acc,
            "drop_pt": (acc_ref - acc) * 100,
            "sqnr_db": float(10 * np.log10(np.sum(ref**2) / np.sum((ref - out) ** 2))),
            "agreement": float(np.mean(out.argmax(1) == ref.argmax(1))),
        }
    return row


def onnxruntime_as_is(baseline: Path, folder: Path) -> Path:
    """onnxruntime's FP8 with nothing of modelquant's: its scales, its graph rewrites."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from modelquant.schemes import quiet_quantizer

    pre, out = folder / "pre.onnx", folder / "ort_fp8.onnx"
    x = load("train").inputs["input"][:256]
    batches = iter([{"input": x[i : i + 32]} for i in range(0, 256, 32)])

    class Reader:
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    with quiet_quantizer():
        quant_pre_process(str(baseline), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QFLOAT8E4M3FN,
            weight_type=QuantType.QFLOAT8E4M3FN,
            calibrate_method=CalibrationMethod.Distribution,
        )
    return out


def seeded_checkpoints(seeds: int, folder: Path) -> dict[str, tuple[str, Path]]:
    """name -> (factory, checkpoint) of digits CNNs (full and half width) trained with seeds
    1..N and 0..N-1, written once under `folder`."""
    from safetensors.torch import save_file

    from modelquant.examples.digits import model, train

    found: dict[str, tuple[str, Path]] = {}
    for kind, build, first in (("build", model.build, 1), ("build_half", model.build_half, 0)):
        for seed in range(first, first + seeds):
            path = folder / f"{kind}-seed{seed}.safetensors"
            if not path.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                save_file(train.train(build(), seed=seed).state_dict(), str(path))
            found[f"{kind} seed {seed}"] = (f"modelquant.examples.digits.model:{kind}", path)
    return found


def run_variant(overrides: list[str], out: Path, repeats: int) -> Any:
    recipe = load_recipe(RECIPE, [*overrides, f"evaluate.repeats={repeats}", "evaluate.threads=1"])
    return Pipeline(recipe, RECIPE, out).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-fp8"))
    args = parser.parse_args()
    console = Console(width=200)
    rows: list[dict[str, Any]] = []
    base: dict[str, np.ndarray] = {}
    env = None
    for label, overrides in VARIANTS.items():
        out = args.out / f"v{len(rows)}"
        report = run_variant(overrides, out, args.repeats)
        env = report.environment
        if not base:
            base_path = out / report.artifacts["baseline"]
            base = outputs(base_path)
            with tempfile.TemporaryDirectory() as tmp:
                raw = compare(base, outputs(onnxruntime_as_is(base_path, Path(tmp))))
            rows.append({"variant": "onnxruntime as is (Distribution)", **raw})
        cpu_b, cpu_c = report.baseline.backends["cpu"], report.compressed.backends["cpu"]
        rows.append(
            {
                "variant": label,
                **compare(base, outputs(out / report.artifacts["compressed"])),
                "size_ratio": report.deltas.size_ratio,
                "emulated": cpu_c.emulated,
                "latency_ratio": {
                    bs: cpu_c.latency_ms[bs].p50 / cpu_b.latency_ms[bs].p50
                    for bs in cpu_b.latency_ms
                },
            }
        )
    assert env is not None
    table = Table(
        title=f"digits CNN, FP8 (E4M3FN) vs FP32 · {env.cpu} · onnxruntime {env.onnxruntime}"
    )
    for col in (
        "scales",
        "val drop",
        "test drop",
        "val SQNR",
        "test SQNR",
        "CPU time x, bs 1 / 32",
    ):
        table.add_column(col)
    for r in rows:
        lat = r.get("latency_ratio")
        table.add_row(
            r["variant"],
            f"{r['val']['drop_pt']:+.2f} pt",
            f"{r['test']['drop_pt']:+.2f} pt",
            f"{r['val']['sqnr_db']:.1f} dB",
            f"{r['test']['sqnr_db']:.1f} dB",
            f"{lat['1']:.1f} / {lat['32']:.1f} (emulated)" if lat else "",
        )
    console.print(table)
    console.print(
        "drop: FP32 minus FP8 top-1 (val 270, test 450 images: one image is 0.37 / 0.22 pt)"
    )
    result: dict[str, Any] = {
        "cpu": env.cpu,
        "cpu_flags": env.cpu_flags,
        "onnxruntime": env.onnxruntime,
        "rows": rows,
    }
    if args.seeds:
        result["models"] = across_models(args, console, rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fp8_scales.json").write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out / 'fp8_scales.json'}")


def across_models(args: Any, console: Console, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each variant on the shipped CNN (from `rows`) and the seeded ones, val only, untimed."""
    val_rows: dict[str, list[dict[str, Any]]] = {
        r["variant"]: [r["val"]] for r in rows if r["variant"] in VARIANTS
    }
    for name, (factory, checkpoint) in seeded_checkpoints(args.seeds, args.out / "ckpt").items():
        model = [f"model.factory={factory}", f"model.checkpoint={checkpoint.resolve()}"]
        base: dict[str, np.ndarray] = {}
        for label, overrides in VARIANTS.items():
            out = args.out / "models" / name.replace(" ", "-")
            report = run_variant([*overrides, *model, "evaluate.batch_sizes=[1]"], out, 1)
            if not base:
                base = {"val": outputs(out / report.artifacts["baseline"])["val"]}
            got = {"val": outputs(out / report.artifacts["compressed"])["val"]}
            val_rows[label].append(compare(base, got)["val"])
    summary = {
        label: {
            "models": len(vals),
            "sqnr_db_mean": float(np.mean([v["sqnr_db"] for v in vals])),
            "sqnr_db_min": float(np.min([v["sqnr_db"] for v in vals])),
            "drop_pt_mean": float(np.mean([v["drop_pt"] for v in vals])),
            "drop_pt_max": float(np.max([v["drop_pt"] for v in vals])),
            "agreement_mean": float(np.mean([v["agreement"] for v in vals])),
        }
        for label, vals in val_rows.items()
    }
    n = next(iter(summary.values()))["models"]
    table = Table(title=f"val only, over {n} digits CNNs (the shipped one, seeded full and half)")
    for col in ("scales", "SQNR mean", "SQNR worst", "drop mean", "drop worst", "top-1 agrees"):
        table.add_column(col)
    for label, m in summary.items():
        table.add_row(
            label,
            f"{m['sqnr_db_mean']:.2f} dB",
            f"{m['sqnr_db_min']:.2f} dB",
            f"{m['drop_pt_mean']:+.2f} pt",
            f"{m['drop_pt_max']:+.2f} pt",
            f"{m['agreement_mean']:.2%}",
        )
    console.print(table)
    return summary


if __name__ == "__main__":
    main()
