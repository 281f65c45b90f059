"""Which MiniLM layers cost dynamic INT8 the most cosine: each weight MatMul group, then each single
weight MatMul, left in float in turn, scored on the recipes' validation split (never the gated
evaluation split).

Usage: python benchmarks/minilm_dynamic_layers.py [--out runs/minilm-dynamic-layers.json]

Exports the packaged all-MiniLM-L6-v2 with optimum, quantizes it with onnxruntime's
`quantize_dynamic` (per-channel int8 weights) once per variant, and prints mean / p5 / min cosine to
the FP32 embeddings, nearest-neighbour agreement and file size. recipes/minilm-int8-dynamic.yaml
keeps the six feed-forward matrices that gain most alone with their weights stored as float16
(`fp16: {compute: float32}`), which fits its 0.3x size budget; the last row measures that choice.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import numpy as np

from modelquant import metrics
from modelquant.data import Dataset, load_dataset
from modelquant.models.hf import go_offline, packaged_path
from modelquant.recipe import DataSpec
from modelquant.schemes.fp16 import store_weights_half
from modelquant.tasks import FEATURE_EXTRACTION

SENTENCES = Path(__file__).resolve().parent.parent / "examples" / "minilm" / "sentences.csv"
GROUPS = {
    "qkv": r"/attention/self/(query|key|value)/MatMul$",
    "attention output": r"/attention/output/dense/MatMul$",
    "ffn in": r"/intermediate/dense/MatMul$",
    "ffn out": r"/layer\.\d+/output/dense/MatMul$",
}


def embeddings(path: Path, data: Dataset) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    out = [
        FEATURE_EXTRACTION.reduce(b, session.run(None, {n: b[n] for n in names})[0])
        for b, _ in data.batches(16)
    ]
    return np.concatenate(out)


def variants(nodes: list[str]) -> dict[str, list[str]]:
    """Variant name -> nodes left float: none, each group in every layer, each group per layer,
    and layer 0's feed-forward pair."""

    def pick(pattern: str, layer: int | None = None) -> list[str]:
        return [
            n for n in nodes if re.search(pattern, n) and (layer is None or f"/layer.{layer}/" in n)
        ]

    out: dict[str, list[str]] = {"all int8": []}
    for name, parts in GROUPS.items():
        out[f"{name} float (all layers)"] = pick(parts)
    for layer in range(6):
        out[f"layer {layer} ffn out float"] = pick(GROUPS["ffn out"], layer)
    out["layer 0 ffn pair float"] = pick(GROUPS["ffn in"], 0) + pick(GROUPS["ffn out"], 0)
    for pattern in GROUPS.values():
        for node in pick(pattern):
            out[node] = [node]
    return out


RECIPE_FP16 = [
    r"/encoder/layer\.[012]/output/dense/MatMul",
    r"/encoder/layer\.[134]/intermediate/dense/MatMul",
]
"""The recipe's fp16-stored nodes (its rules, without the `re:` prefix)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/minilm-dynamic-layers.json"))
    args = parser.parse_args()
    go_offline()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from optimum.exporters.onnx import main_export

    folder = packaged_path("all-MiniLM-L6-v2")
    spec = DataSpec(source="text", path=SENTENCES, split="validation", tokenizer=str(folder))
    data = load_dataset(spec, SENTENCES.parent)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        main_export(str(folder), tmp, task="feature-extraction", library_name="transformers")
        fp32 = Path(tmp) / "model.onnx"
        reference = embeddings(fp32, data)
        nodes = [n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node]
        chosen = [n for n in nodes if any(re.fullmatch(p, n) for p in RECIPE_FP16)]
        todo = {**variants(nodes), "recipe: six ffn weights stored fp16": chosen}
        for name, floats in todo.items():
            out = Path(tmp) / "q.onnx"
            quantize_dynamic(
                str(fp32),
                str(out),
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=floats,
            )
            if name.startswith("recipe"):
                model = onnx.load(str(out))
                store_weights_half(model, set(floats))
                onnx.save_model(model, str(out))
            e = embeddings(out, data)
            s = metrics.cosine_stats(e, reference)
            row = {
                "variant": name,
                "float_nodes": len(floats),
                "cosine_mean": s.mean,
                "cosine_p5": s.p5,
                "cosine_min": s.min,
                "neighbour_agreement": metrics.neighbour_agreement(e, reference),
                "size_ratio": out.stat().st_size / fp32.stat().st_size,
            }
            rows.append(row)
            print(
                f"{name:50s} mean {s.mean:.4f} p5 {s.p5:.4f} min {s.min:.4f} "
                f"nn {row['neighbour_agreement']:.3f} size {row['size_ratio']:.3f}x",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"samples": len(data), "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
