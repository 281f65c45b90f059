"""The bad-input battery: every part of a recipe, every file it names, data that does not fit,
output folders and backends, each through the CLI (`compress RECIPE --out DIR`).

Every refused case must: exit 2, print exactly one error line on stderr (progress lines start with
'·') that names what to fix, print no traceback and nothing on stdout, leave the recipe's folder
and the working directory as they were, and leave no report, `.partial` folder or `.tmp` file in
the output folder. Most cases fail while the plan is checked, before anything runs, so the whole
battery takes seconds; the few that need a stage to start use the tiny digits CNN.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner, Result

from modelquant.cli import app
from tests.conftest import tiny_recipe_dict

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
DROP = object()
"""An edit value meaning: remove this key."""
NOISE = np.random.default_rng(0).bytes(4096)
"""Bytes that are no file format (the same on every run)."""


# ---------------------------------------------------------------- the sandbox every case runs in


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def _leftovers(out: Path) -> list[str]:
    """What a failed run must not leave in its output folder."""
    if not out.exists():
        return []
    return sorted(
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.name.startswith("report.")
        or p.name == "junit.xml"
        or p.name.endswith((".partial", ".tmp"))
    )


@dataclass
class Sandbox:
    """A recipe's folder (`home`, where the files it names live), a working directory (`cwd`) and
    an output folder (`out`), all fresh; `run` checks that a command left the first two alone."""

    home: Path
    cwd: Path
    out: Path
    checkpoint: Path

    def doc(self, **changes: Any) -> dict[str, Any]:
        """The tiny digits recipe (factory + checkpoint, export, int8), measured lightly."""
        doc = tiny_recipe_dict(self.checkpoint, **changes)
        doc["data"]["calibration"]["samples"] = 32
        doc["evaluate"].update(batch_sizes=[1], warmup=0, repeats=2, block=1)
        return doc

    def onnx_doc(self, model: Path | str) -> dict[str, Any]:
        """A recipe that quantizes an ONNX model file."""
        doc = self.doc(stages=[{"quantize": {}}])
        doc["model"] = {"onnx": str(model)}
        return doc

    def write(self, doc: Any = None, *, text: str | bytes | None = None) -> Path:
        path = self.home / "recipe.yaml"
        if text is None:
            text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    def run(self, *args: str) -> Result:
        """`modelquant ARGS`, in `cwd`; nothing may appear or change in `home` or `cwd`."""
        before = (_snapshot(self.home), _snapshot(self.cwd))
        result = runner.invoke(app, list(args))
        assert (_snapshot(self.home), _snapshot(self.cwd)) == before, "stray files"
        return result

    def compress(self, recipe: Path, *extra: str) -> Result:
        result = self.run("compress", str(recipe), "--out", str(self.out), *extra)
        assert _leftovers(self.out) == [], _leftovers(self.out)
        return result


@pytest.fixture
def box(tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return Sandbox(home, cwd, tmp_path / "out", tiny_checkpoint)


def refused(result: Result, *fragments: str, code: int = 2) -> str:
    """The exit code, one error line on stderr holding every fragment, no traceback, no stdout."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    assert result.stdout.strip() == "", result.stdout
    errors = [
        line for line in result.stderr.splitlines() if line.strip() and not line.startswith("·")
    ]
    assert len(errors) == 1, result.stderr
    (line,) = errors
    label = {2: "bad input: ", 3: "stage failed: "}[code]
    assert line.startswith(label), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def edit(doc: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    """A copy of `doc` with `{"a.b.0.c": value}` edits applied (DROP removes the key)."""
    doc = copy.deepcopy(doc)
    for dotted, value in edits.items():
        *parents, last = [int(p) if p.isdigit() else p for p in dotted.split(".")]
        node: Any = doc
        for part in parents:
            node = node[part]
        if value is DROP:
            del node[last]
        else:
            node[last] = value
    return doc


# ---------------------------------------------------------------- every part of a recipe

EXPORT, QUANTIZE = {"export": {"opset": 17}}, {"quantize": {"precision": "int8"}}

RECIPE_CASES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    # unknown keys, one per level
    ("model-key", {"model.chekpoint": "x"}, ("unknown key 'chekpoint'", "'checkpoint'", "model")),
    (
        "data-section-key",
        {"data.calibraton": {"source": "digits", "split": "train"}},
        ("unknown key 'calibraton'", "did you mean 'calibration'", "(in data)"),
    ),
    (
        "data-entry-key",
        {"data.evaluation.splt": "test"},
        ("unknown key 'splt'", "did you mean 'split'", "data.evaluation"),
    ),
    (
        "stage-key",
        {"stages.1.quantize.precison": "int8"},
        ("unknown key 'precison'", "did you mean 'precision'", "stages[1].quantize"),
    ),
    (
        "stage-section-key",
        {"stages": [{"prune": {"schedule": {"kind": "gradual", "step": 2}}}, EXPORT, QUANTIZE]},
        ("unknown key 'step'", "did you mean 'steps'", "stages[0].prune.schedule"),
    ),
    (
        "finetune-key",
        {"stages": [{"prune": {"finetune": {"epoch": 1}}}, EXPORT, QUANTIZE]},
        ("unknown key 'epoch'", "did you mean 'epochs'", "finetune"),
    ),
    (
        "override-rule-key",
        {"stages.1.quantize.overrides": [{"match": "classifier.1", "precison": "fp32"}]},
        ("unknown key 'precison'", "did you mean 'precision'", "overrides[0]"),
    ),
    (
        "evaluate-key",
        {"evaluate.repeat": 3},
        ("unknown key 'repeat'", "did you mean 'repeats'", "(in evaluate)"),
    ),
    (
        "evaluate-npu-key",
        {"evaluate.npu": {"sample": 8}},
        ("unknown key 'sample'", "did you mean 'samples'", "evaluate.npu"),
    ),
    (
        "gates-key",
        {"gates.max_acc_drop": 0.01},
        ("unknown key 'max_acc_drop'", "did you mean 'max_accuracy_drop'", "(in gates)"),
    ),
    ("output-key", {"output": {"format": ["json"]}}, ("unknown key 'format'", "'formats'")),
    # wrong types, one per level
    ("seed-type", {"seed": "abc"}, ("seed:", "valid integer")),
    ("model-type", {"model": "cnn.onnx"}, ("model:", "valid dictionary")),
    ("model-kwargs-type", {"model.kwargs": [8, 32]}, ("model.kwargs:", "valid dictionary")),
    ("data-type", {"data": ["digits"]}, ("data:", "valid dictionary")),
    ("data-entry-type", {"data.evaluation": "digits:test"}, ("data.evaluation:",)),
    ("stages-type", {"stages": {"export": {}}}, ("stages:", "valid list")),
    ("stage-two-names", {"stages": [{"export": {}, "quantize": {}}]}, ("one key, the stage",)),
    ("stage-config-type", {"stages.0.export": [17]}, ("stages[0].export:", "dictionary")),
    (
        "stage-setting-type",
        {"stages.1.quantize.per_channel": "sometimes"},
        ("stages[1].quantize.per_channel:", "valid boolean"),
    ),
    ("evaluate-type", {"evaluate.backends": "cpu"}, ("evaluate.backends:", "valid list")),
    ("gates-type", {"gates": [0.01]}, ("gates:", "valid dictionary")),
    ("gates-speedup-type", {"gates.min_speedup": 1.5}, ("gates.min_speedup:", "dictionary")),
    ("output-type", {"output": "out/"}, ("output:", "valid dictionary")),
    ("output-formats-type", {"output": {"formats": "json"}}, ("output.formats:", "valid list")),
    ("name-path", {"name": "../elsewhere"}, ("name:", "it names a folder")),
    # values out of range
    (
        "sparsity-negative",
        {"stages": [{"prune": {"sparsity": -0.1}}, EXPORT, QUANTIZE]},
        ("stages[0].prune.sparsity:", "greater than or equal to 0"),
    ),
    (
        "sparsity-above-one",
        {"stages": [{"prune": {"sparsity": 1.5}}, EXPORT, QUANTIZE]},
        ("stages[0].prune.sparsity:", "less than 1"),
    ),
    (
        "data-batch-size-zero",
        {"data.evaluation.batch_size": 0},
        ("data.evaluation.batch_size:", "greater than 0"),
    ),
    ("timed-batch-size-zero", {"evaluate.batch_sizes": [0]}, ("evaluate.batch_sizes[0]:",)),
    ("samples-zero", {"data.calibration.samples": 0}, ("data.calibration.samples:",)),
    ("repeats-zero", {"evaluate.repeats": 0}, ("evaluate.repeats:", "greater than 0")),
    (
        "bits-3",
        {"stages.1.quantize": {"precision": "int4", "int4": {"bits": 3}}},
        ("stages[1].quantize.int4.bits:", "4 or 8"),
    ),
    (
        "opset-99",
        {"stages.0.export.opset": 99},
        ("stages[0].export.opset:", "less than or equal to 21"),
    ),
    (
        "percentile-150",
        {"stages.1.quantize.calibration": {"method": "percentile", "percentile": 150}},
        ("quantize.calibration.percentile:", "less than or equal to 100"),
    ),
    (
        "precision-unknown",
        {"stages.1.quantize.precision": "int3"},
        ("stages[1].quantize.precision:", "unknown precision 'int3'", "registered: "),
    ),
    (
        "accuracy-drop-negative",
        {"gates.max_accuracy_drop": -0.01},
        ("gates.max_accuracy_drop:", "greater than or equal to 0"),
    ),
    ("seed-negative", {"seed": -1}, ("seed:", "greater than or equal to 0")),
    ("seed-too-large", {"seed": 2**70}, ("seed:", "less than")),
    ("speedup-zero", {"gates.min_speedup": {"cpu": 0}}, ("gates.min_speedup.cpu:", "than 0")),
    (
        "speedup-nan",
        {"gates.min_speedup": {"cpu": float("nan")}},
        ("gates.min_speedup.cpu:", "finite number"),
    ),
    (
        "size-ratio-infinite",
        {"gates.max_size_ratio": float("inf")},
        ("gates.max_size_ratio:", "finite number"),
    ),
    (
        "learning-rate-infinite",
        {"stages": [{"prune": {"finetune": {"lr": float("inf")}}}, EXPORT, QUANTIZE]},
        ("stages[0].prune.finetune.lr:", "finite number"),
    ),
    (
        "prune-ignore-regex",
        {"stages": [{"prune": {"ignore": ["re:classifier.(1"]}}, EXPORT, QUANTIZE]},
        ("stages[0].prune.ignore", "'re:classifier.(1' is not a valid regular expression"),
    ),
    # backends and gates
    ("backend-unknown", {"evaluate.backends": ["cpu", "tpu"]}, ("unknown backend 'tpu'",)),
    ("backend-twice", {"evaluate.backends": ["cpu", "cpu"]}, ("list each backend once",)),
    ("backends-none", {"evaluate.backends": []}, ("at least one",)),
    (
        "gate-on-absent-backend",
        {"gates.min_speedup": {"cuda": 1.2}},
        ("gates.min_speedup names backend 'cuda'", "evaluate.backends does not measure"),
    ),
    (
        "gate-on-emulated-backend",
        {"evaluate.backends": ["cpu", "npu"], "gates.min_speedup": {"npu": 1.2}},
        ("gates.min_speedup.npu", "emulated", "never gated on"),
    ),
    (
        "gate-batch-size-not-timed",
        {"gates.min_speedup": {"cpu": 1.0}, "gates.speedup_batch_size": 64},
        ("gates.speedup_batch_size 64 is not in evaluate.batch_sizes",),
    ),
    (
        "similarity-gate-on-classifier",
        {"gates.min_cosine": 0.99},
        ("gates.min_cosine measures embeddings", "use max_accuracy_drop"),
    ),
    (
        "report-format-unknown",
        {"output": {"formats": ["json", "pdf"]}},
        ("unknown report format 'pdf'", "valid: "),
    ),
]


@pytest.mark.parametrize(
    ("edits", "fragments"),
    [pytest.param(e, f, id=i) for i, e, f in RECIPE_CASES],
)
def test_recipe(box: Sandbox, edits: dict[str, Any], fragments: tuple[str, ...]) -> None:
    line = refused(box.compress(box.write(edit(box.doc(), edits))), *fragments)
    assert "recipe.yaml" in line or "stages" in line  # the file (and line) or the stage at fault


# ---------------------------------------------------------------- the recipe file itself


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param(
            b"\xff\xfename: x\n", ("is not UTF-8 text", "a recipe is a YAML file"), id="binary"
        ),
        pytest.param("", ("a recipe is a YAML mapping",), id="empty"),
        pytest.param("- export\n- quantize\n", ("a recipe is a YAML mapping",), id="a-list"),
        pytest.param(
            "name: t\nstages: &s [*s]\n",
            ("invalid YAML at", "recipe.yaml:2", "alias refers to a mapping or list that contains"),
            id="alias-inside-itself",
        ),
        pytest.param(
            "name: " + "[" * 2000 + "]" * 2000 + "\n", ("nested too deeply",), id="nested-2000-deep"
        ),
    ],
)
def test_recipe_file(box: Sandbox, text: str | bytes, fragments: tuple[str, ...]) -> None:
    refused(box.compress(box.write(text=text)), *fragments)


def test_recipe_that_is_a_folder(box: Sandbox) -> None:
    refused(box.compress(box.home), "recipe file not found", str(box.home))


def test_recipes_validate_on_a_binary_file(box: Sandbox) -> None:
    path = box.write(text=b"\x80\x81 not yaml")
    refused(box.run("recipes", "validate", str(path)), "is not UTF-8 text")


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        pytest.param("stages.²=1", ("--set stages.²", "is not an index"), id="superscript-index"),
        pytest.param("seed.x=1", ("--set seed.x", "not a section"), id="into-a-value"),
        pytest.param(
            "gates.min_speedup.cpu=.nan", ("gates.min_speedup.cpu", "(from --set)"), id="nan"
        ),
        pytest.param("a\nb=1", ("unknown key 'a\\nb'",), id="line-break-in-key"),
    ],
)
def test_set(box: Sandbox, override: str, fragments: tuple[str, ...]) -> None:
    refused(box.compress(box.write(box.doc()), "--set", override), *fragments)


# ---------------------------------------------------------------- files a recipe names


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny digits CNN as ONNX (input 'input', N x 1 x 8 x 8; opset 17, one file)."""
    from modelquant.data import digits
    from modelquant.state import export_onnx
    from tests.tiny_models import build

    x = digits.load("test").inputs["input"][:2]
    return export_onnx(build(8, 32), {"input": x}, tmp_path_factory.mktemp("onnx") / "cnn.onnx")


def _truncated(source: Path, keep: int) -> Callable[[Path], object]:
    return lambda path: path.write_bytes(source.read_bytes()[:keep])


CHECKPOINT_CASES = [
    ("empty", "w.safetensors", lambda p: p.write_bytes(b""), "not a readable safetensors file"),
    ("random-bytes", "w.safetensors", lambda p: p.write_bytes(NOISE[:4096]), "safetensors"),
    ("a-folder", "w.safetensors", lambda p: p.mkdir(), "is a folder; give the weights file"),
    ("empty-pt", "w.pt", lambda p: p.write_bytes(b""), "cannot be read: the file ends early"),
    ("unknown-suffix", "w.ckpt", lambda p: p.write_bytes(b"\0" * 8), "use a .safetensors file"),
]


@pytest.mark.parametrize(
    ("name", "make", "fragment"),
    [pytest.param(n, m, f, id=i) for i, n, m, f in CHECKPOINT_CASES],
)
def test_checkpoint(box: Sandbox, name: str, make: Callable[[Path], None], fragment: str) -> None:
    make(box.home / name)
    doc = box.doc()
    doc["model"]["checkpoint"] = name  # relative: resolved beside the recipe
    refused(box.compress(box.write(doc)), f"checkpoint {box.home / name}", fragment)


def test_checkpoint_truncated(box: Sandbox) -> None:
    cut = box.home / "cut.safetensors"
    _truncated(box.checkpoint, box.checkpoint.stat().st_size - 100)(cut)
    doc = box.doc()
    doc["model"]["checkpoint"] = str(cut)
    refused(box.compress(box.write(doc)), "cut.safetensors is not a readable safetensors file")


def test_checkpoint_truncated_pt(box: Sandbox) -> None:
    import torch

    from tests.tiny_models import build

    whole, cut = box.out.parent / "whole.pt", box.home / "cut.pt"
    torch.save(build(8, 32).state_dict(), whole)
    _truncated(whole, 300)(cut)
    doc = box.doc()
    doc["model"]["checkpoint"] = str(cut)
    refused(box.compress(box.write(doc)), "cut.pt cannot be read")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_an_onnx_file_given_as_checkpoint(box: Sandbox, tiny_onnx: Path, suffix: str) -> None:
    fake = box.home / f"model{suffix}"
    shutil.copyfile(tiny_onnx, fake)
    doc = box.doc()
    doc["model"]["checkpoint"] = str(fake)
    line = refused(box.compress(box.write(doc)), f"model{suffix}")
    assert "not a readable safetensors file" in line or "refused checkpoint" in line


def test_a_checkpoint_of_another_architecture(box: Sandbox) -> None:
    import torch
    from safetensors.torch import save_file

    other = box.home / "mlp.safetensors"
    save_file(torch.nn.Linear(64, 10).state_dict(), str(other))
    doc = box.doc()
    doc["model"]["checkpoint"] = str(other)
    refused(
        box.compress(box.write(doc)),
        "mlp.safetensors does not fit the model",
        'Missing key(s) in state_dict: "features.0.weight"',
    )


class _Marker:
    """Unpickling this creates a file: a checkpoint loader that runs it has run foreign code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 4"])
def test_a_pickle_carrying_code_is_never_run(box: Sandbox, writer: str) -> None:
    import torch

    from tests.tiny_models import build

    marker = box.out.parent / "PWNED"
    evil = box.home / "evil.pt"
    payload = {**build(8, 32).state_dict(), "payload": _Marker(marker)}
    if writer == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=4))
    doc = box.doc()
    doc["model"]["checkpoint"] = str(evil)
    refused(box.compress(box.write(doc)), "refused checkpoint", "evil.pt", "Unsupported")
    assert not marker.exists()
    # Proof that the payload is live: plain unpickling does create the marker.
    if writer != "torch.save":
        pickle.loads(evil.read_bytes())["payload"].close()
        assert marker.exists()


def test_a_whole_pickled_module_is_refused(box: Sandbox) -> None:
    import torch

    from tests.tiny_models import build

    module = box.home / "module.pt"
    torch.save(build(8, 32), module)
    doc = box.doc()
    doc["model"]["checkpoint"] = str(module)
    refused(
        box.compress(box.write(doc)),
        "refused checkpoint",
        "Unsupported global: GLOBAL tests.tiny_models.TinyCNN",
        "torch.save(model.state_dict())",
    )


def _external(source: Path, target: Path) -> Path:
    """`source` saved as `target` with every weight in `target.name + '.data'`."""
    import onnx

    onnx.save_model(
        onnx.load(str(source)),
        str(target),
        save_as_external_data=True,
        location=f"{target.name}.data",
        size_threshold=0,
    )
    return target


def _opset(version: int) -> Callable[[Path, Path], None]:
    def make(source: Path, target: Path) -> None:
        import onnx

        model = onnx.load(str(source))
        model.opset_import[0].version = version
        onnx.save(model, str(target))

    return make


ONNX_CASES: list[tuple[str, Callable[[Path, Path], Any], tuple[str, ...]]] = [
    ("empty", lambda s, t: t.write_bytes(b""), ("is not a valid ONNX model",)),
    ("truncated", lambda s, t: _truncated(s, 500)(t), ("is not a valid ONNX model",)),
    ("random-bytes", lambda s, t: t.write_bytes(NOISE[:2048]), ("ONNX",)),
    ("a-folder", lambda s, t: t.mkdir(), ("is a folder; give the .onnx file itself",)),
    ("opset-99", _opset(99), ("uses opset 99, newer than this onnx", "export it with an opset")),
    (
        "external-data-missing",
        lambda s, t: _external(s, t).with_name(f"{t.name}.data").unlink(),
        ("model.onnx.data", "not regular file"),
    ),
    (
        "external-data-truncated",
        lambda s, t: _truncated(_external(s, t).with_name(f"{t.name}.data"), 100)(
            t.with_name(f"{t.name}.data")
        ),
        ("external data file model.onnx.data ends at byte 100", "copy the complete"),
    ),
]


@pytest.mark.parametrize(
    ("make", "fragments"),
    [pytest.param(m, f, id=i) for i, m, f in ONNX_CASES],
)
def test_onnx_model(
    box: Sandbox,
    tiny_onnx: Path,
    make: Callable[[Path, Path], Any],
    fragments: tuple[str, ...],
) -> None:
    target = box.home / "model.onnx"
    make(tiny_onnx, target)
    refused(box.compress(box.write(box.onnx_doc(target))), "model.onnx", *fragments)


@pytest.mark.parametrize("name", ["model.onnx", "model.safetensors"])
def test_a_checkpoint_where_an_onnx_model_is_expected(box: Sandbox, name: str) -> None:
    shutil.copyfile(box.checkpoint, box.home / name)
    refused(
        box.compress(box.write(box.onnx_doc(name))),
        f"{box.home / name} is not a valid ONNX model",
    )


# ---------------------------------------------------------------- data that does not fit


def _digits_test() -> tuple[np.ndarray, np.ndarray]:
    from modelquant.data import digits

    data = digits.load("test")
    assert data.labels is not None
    return data.inputs["input"], data.labels


def _npz(**arrays: Any) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays)


def _npy(path: Path) -> None:
    with path.open("wb") as f:
        np.save(f, _digits_test()[0])


X, Y = _digits_test()
DATA_CASES: list[tuple[str, str, Callable[[Path], Any], dict[str, Any], tuple[str, ...]]] = [
    ("npz-empty-file", "e.npz", lambda p: p.write_bytes(b""), {}, ("cannot read", "e.npz")),
    ("npz-truncated", "e.npz", lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 40), {}, ("e.npz",)),
    ("npz-a-folder", "e.npz", lambda p: p.mkdir(), {}, ("is a folder; give path: the .npz",)),
    ("npz-is-npy", "e.npz", _npy, {}, ("is one numpy array (.npy)", "np.savez")),
    ("npz-no-arrays", "e.npz", _npz(), {}, ("holds no arrays",)),
    (
        "npz-scalar",
        "e.npz",
        _npz(input=np.float32(1), labels=Y),
        {},
        ("['input'] are single values",),
    ),
    (
        "npz-object-array",
        "e.npz",
        _npz(input=np.array([object()] * 3, dtype=object), labels=Y[:3]),
        {},
        ("Object arrays cannot be loaded",),
    ),
    (
        "label-count",
        "e.npz",
        _npz(input=X, labels=Y[:-5]),
        {},
        ("arrays disagree on the sample count", "'<labels>': 445", "one entry per sample"),
    ),
    (
        "labels-2d",
        "e.npz",
        _npz(input=X, labels=np.stack([Y, Y], 1)),
        {},
        ("labels must be one integer class index per row",),
    ),
    (
        "labels-text",
        "e.npz",
        _npz(input=X, labels=Y.astype(str)),
        {},
        ("labels must be one integer class index per row",),
    ),
    (
        "inputs-text",
        "e.npz",
        _npz(input=X.astype(str), labels=Y),
        {},
        ("a model input takes numbers",),
    ),
    (
        "inputs-complex",
        "e.npz",
        _npz(input=X.astype(np.complex64), labels=Y),
        {},
        ("complex64", "a model input takes numbers"),
    ),
    (
        "labels-array-named-wrong",
        "e.npz",
        _npz(input=X, target=Y),
        {"labels": "labels"},
        ("has no array 'labels'", "['input', 'target']"),
    ),
    (
        "inputs-named-wrong",
        "e.npz",
        _npz(input=X, labels=Y),
        {"inputs": ["pixels"]},
        ("has no array(s) ['pixels']",),
    ),
    (
        "npz-rank-5",
        "e.npz",
        _npz(input=X[..., None], labels=Y),
        {},
        ("forward fails on 2 rows", "feed data shaped as the model was trained on"),
    ),
    (
        "csv-binary",
        "e.csv",
        lambda p: p.write_bytes(b"\xff\xd8\xff" * 50),
        {},
        ("cannot read", "as CSV"),
    ),
    ("csv-a-folder", "e.csv", lambda p: p.mkdir(), {}, ("is a folder; give path: the .csv",)),
    ("csv-empty", "e.csv", lambda p: p.write_text(""), {}, ("is empty", "header row")),
    ("csv-header-only", "e.csv", lambda p: p.write_text("a,labels\n"), {}, ("has no rows",)),
    ("csv-inf", "e.csv", lambda p: p.write_text("a,labels\n1,0\ninf,1\n"), {}, ("NaN or Inf",)),
]


@pytest.mark.parametrize(
    ("name", "make", "settings", "fragments"),
    [pytest.param(n, m, s, f, id=i) for i, n, m, s, f in DATA_CASES],
)
def test_data(
    box: Sandbox,
    name: str,
    make: Callable[[Path], Any],
    settings: dict[str, Any],
    fragments: tuple[str, ...],
) -> None:
    make(box.home / name)
    source = name.rsplit(".", 1)[1]
    doc = box.doc()
    doc["data"]["evaluation"] = {"source": source, "path": name, **settings}
    refused(box.compress(box.write(doc)), *fragments)


# ---------------------------------------------------------------- output folders


def test_output_dir_in_the_recipe_that_is_a_file(box: Sandbox) -> None:
    taken = box.home / "taken"
    taken.write_text("keep me")
    recipe = box.write(box.doc(output={"dir": str(taken)}))
    refused(box.run("compress", str(recipe)), "is a file; give --out a folder")
    assert taken.read_text() == "keep me"


def test_an_output_folder_without_write_permission(box: Sandbox) -> None:
    locked = box.out
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root (as in many CI containers) writes anyway
            pytest.skip("running as root: chmod does not deny writing, nothing to test")
        refused(box.compress(box.write(box.doc())), "cannot write to output folder", str(locked))
        assert sorted(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------- backends not installed


def _cuda_here() -> bool:
    from modelquant.backends import get_backend

    return get_backend("cuda").available()[0]


def test_cuda_without_a_gpu_is_skipped_with_its_reason(box: Sandbox) -> None:
    """Documented (README, Backends): cuda is skipped with the reason where there is no GPU,
    and the run goes on."""
    if _cuda_here():
        pytest.skip("this machine has a CUDA execution provider")
    recipe = box.write(box.doc(evaluate={"backends": ["cpu", "cuda"]}))
    result = box.run("compress", str(recipe), "--out", str(box.out))
    assert result.exit_code == 0, result.output
    skipped = json.loads((box.out / "report.json").read_text())["compressed"]["backends"]["cuda"]
    assert "has no CUDA execution provider" in skipped["skipped"]
    assert "modelquant[cuda]" in skipped["skipped"]


def test_a_speed_gate_on_a_backend_that_cannot_run_fails_closed(box: Sandbox) -> None:
    """A gate that cannot be measured is not passed: exit 1 (a gate failed), naming the reason."""
    if _cuda_here():
        pytest.skip("this machine has a CUDA execution provider")
    doc = box.doc(evaluate={"backends": ["cpu", "cuda"], "batch_sizes": [1], "repeats": 2})
    doc["gates"]["min_speedup"] = {"cuda": 1.0}
    result = box.run("compress", str(box.write(doc)), "--out", str(box.out))
    assert result.exit_code == 1, result.output
    # (a "warning:" line may say the CPU timing of 2 runs came out slower: noise, not an error)
    errors = [
        ln
        for ln in result.stderr.splitlines()
        if ln.strip() and not ln.startswith(("·", "warning:"))
    ]
    assert len(errors) == 1 and errors[0].startswith("gate failed:"), result.stderr
    assert "min_speedup.cuda (not measured: onnxruntime" in errors[0]
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- found once a stage starts


def test_output_names_that_do_not_match_the_outputs(box: Sandbox) -> None:
    doc = box.doc()
    doc["stages"][0]["export"]["output_names"] = ["logits", "extra"]
    refused(
        box.compress(box.write(doc)),
        "export output_names lists 2 name(s), and the model has 1 output(s)",
    )


def test_an_output_name_that_is_an_input_name(box: Sandbox) -> None:
    doc = box.doc()
    doc["stages"][0]["export"]["output_names"] = ["input"]
    refused(box.compress(box.write(doc)), "export output_names: ['input'] used twice")


def test_a_factory_that_raises_on_its_kwargs(box: Sandbox) -> None:
    doc = box.doc()
    doc["model"]["kwargs"]["width"] = -3
    refused(
        box.compress(box.write(doc)),
        "model factory 'tests.tiny_models:build' failed with kwargs",
        "negative dimension",
        "fix the factory or model.kwargs",
    )


DISTILL_STUDENTS = [
    ("no-weights", {"factory": "torch.nn:Identity"}, "distill student has no weights to train"),
    (
        "other-input",
        {"factory": "torch.nn:Linear", "kwargs": {"in_features": 3, "out_features": 10}},
        "distill student: its forward fails on 2 rows of data.train",
    ),
    (
        "other-classes",
        {"factory": "torch.nn:Linear", "kwargs": {"in_features": 8, "out_features": 10}},
        "distill student outputs shape (2, 1, 8, 10), the teacher (2, 10)",
    ),
]


@pytest.mark.parametrize(
    ("student", "fragment"), [pytest.param(s, f, id=i) for i, s, f in DISTILL_STUDENTS]
)
def test_a_distillation_student_that_cannot_learn(
    box: Sandbox, student: dict[str, Any], fragment: str
) -> None:
    stages = [{"distill": {"student": student, "finetune": {"epochs": 1}}}, EXPORT, QUANTIZE]
    refused(box.compress(box.write(box.doc(stages=stages))), fragment)


# ---------------------------------------------------------------- the real process


def _python_m(box: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    before = (_snapshot(box.home), _snapshot(box.cwd))
    proc = subprocess.run(
        [sys.executable, "-m", "modelquant", *args],
        capture_output=True,
        text=True,
        cwd=box.cwd,
        env=env,
        timeout=300,
    )
    assert (_snapshot(box.home), _snapshot(box.cwd)) == before, "stray files"
    assert _leftovers(box.out) == []
    return proc


def test_a_process_given_a_binary_recipe(box: Sandbox) -> None:
    proc = _python_m(box, "compress", str(box.write(text=b"\xff" + NOISE[:64])), "-o", str(box.out))
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("bad input:") and "is not UTF-8 text" in proc.stderr


def test_a_process_given_a_pickle_carrying_code(box: Sandbox) -> None:
    marker = box.out.parent / "PWNED"
    evil = box.home / "evil.pt"
    evil.write_bytes(pickle.dumps({"w": _Marker(marker)}, protocol=2))
    doc = box.doc()
    doc["model"]["checkpoint"] = str(evil)
    proc = _python_m(box, "compress", str(box.write(doc)), "-o", str(box.out), "--dry-run")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("·")]
    assert "refused checkpoint" in line and "Unsupported global: GLOBAL" in line
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
