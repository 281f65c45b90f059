"""The quantize stage: QDQ/QOperator/dynamic INT8 through onnxruntime.quantization."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from modelquant.errors import UserError
from modelquant.models import onnx_file
from modelquant.stages.quantize import QuantizeConfig
from tests.pipeline_runs import run_recipe

EVAL = {"backends": ["cpu"], "batch_sizes": [4], "warmup": 0, "repeats": 3, "block": 3}


def ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def quantize(checkpoint: Path, out: Path, **settings: object):  # type: ignore[no-untyped-def]
    stages = [{"export": {}}, {"quantize": settings}]
    return run_recipe(checkpoint, out, stages=stages, evaluate=EVAL)


def test_static_qdq(tiny_checkpoint: Path, tmp_path: Path) -> None:
    report, _ = quantize(tiny_checkpoint, tmp_path, mode="static")
    path = tmp_path / "model.int8.onnx"
    onnx.checker.check_model(str(path))
    ort.InferenceSession(str(path))
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops(path)
    details = report.stages[1].details
    assert details["format"] == "qdq" and details["qdq_nodes"] > 0
    assert details["calibration"]["samples"] == 128
    assert report.baseline.accuracy - report.compressed.accuracy <= 0.02
    assert report.deltas.size_ratio < 0.8
    # per-channel int8 weights: parameters are counted through their DequantizeLinear
    assert report.compressed.params == report.baseline.params


def test_qoperator_format(tiny_checkpoint: Path, tmp_path: Path) -> None:
    quantize(tiny_checkpoint, tmp_path, format="qoperator")
    assert {"QLinearConv", "QuantizeLinear"} <= ops(tmp_path / "model.int8.onnx")


def test_dynamic_mode(tiny_checkpoint: Path, tmp_path: Path) -> None:
    report, _ = quantize(tiny_checkpoint, tmp_path, mode="dynamic")
    assert "DynamicQuantizeLinear" in ops(tmp_path / "model.int8.onnx") or "MatMulInteger" in ops(
        tmp_path / "model.int8.onnx"
    )
    assert "calibration" not in report.stages[1].details


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_histogram_calibration(tiny_checkpoint: Path, tmp_path: Path, method: str) -> None:
    report, _ = quantize(tiny_checkpoint, tmp_path, calibration={"method": method, "samples": 64})
    assert report.stages[1].details["calibration"]["method"] == method
    assert report.compressed.accuracy > 0.8


def test_override_keeps_classifier_in_float(tiny_checkpoint: Path, tmp_path: Path) -> None:
    report, _ = quantize(
        tiny_checkpoint, tmp_path, overrides=[{"match": "re:classifier.*", "precision": "fp32"}]
    )
    kept = report.stages[1].details["kept_float"]
    assert kept and all("classifier" in name for name in kept)
    model = onnx.load(str(tmp_path / "model.int8.onnx"))
    gemm_inputs = {i for n in model.graph.node if n.op_type == "Gemm" for i in n.input}
    assert "classifier.3.weight" in gemm_inputs  # the float weight feeds the Gemm directly


def test_override_matching_nothing_is_an_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="'re:head.*' matches no layer"):
        quantize(tiny_checkpoint, tmp_path, overrides=[{"match": "re:head.*"}])


def test_calibration_cache_reused_across_settings(tiny_checkpoint: Path, tmp_path: Path) -> None:
    first, _ = quantize(tiny_checkpoint, tmp_path, per_channel=True)
    second, _ = quantize(tiny_checkpoint, tmp_path, per_channel=False)  # new stage key, same ranges
    assert first.stages[1].details["calibration"]["cache"] == "computed"
    assert second.stages[1].details["calibration"]["cache"] == "reused"
    assert not second.stages[1].cached


def test_rerun_resumes_from_stage_cache_and_is_deterministic(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # a pinned scheme: mode auto chooses by timing, which no two runs need agree on
    quantize(tiny_checkpoint, tmp_path / "a", mode="static")
    again, _ = quantize(tiny_checkpoint, tmp_path / "a", mode="static")
    assert [s.cached for s in again.stages] == [True, True]
    quantize(tiny_checkpoint, tmp_path / "b", mode="static")
    assert onnx_file.content_hash(tmp_path / "a" / "model.int8.onnx") == onnx_file.content_hash(
        tmp_path / "b" / "model.int8.onnx"
    )


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        QuantizeConfig.model_validate({"precision": "int8", "per_chanel": True})


# ---------------------------------------------------------------- layer rules on the real graph

MIXER = {"factory": "tests.schemes.models:build_mixer"}
# quant_pre_process fuses the mixer's MatMul + Add into this Gemm when the batch is fixed
FIXED_EXPORT = {"export": {"dynamic_batch": False, "batch_size": 4}}
FUSED = "/mixer/MatMul/MatMulAddFusion"


def node_precisions(path: Path) -> dict[str, str]:
    """Node name -> 'int8' or 'fp32' for every node with a weight, read from the ONNX graph:
    int8 when it is an integer op or its weight comes out of a DequantizeLinear. quantize_dynamic
    turns a Gemm 'g' into MatMul 'g_MatMul' (+ Add), quantized as 'g_MatMul_quant': read as 'g'."""
    graph = onnx.load(str(path)).graph
    initializers = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    found = {}
    for node in graph.node:
        name = node.name.removesuffix("_quant").removesuffix("_MatMul")
        if node.op_type.startswith("QLinear") or node.op_type.endswith("Integer"):
            found[name] = "int8"
        elif node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            made_by = producer.get(node.input[1])
            dequantized = made_by is not None and made_by.op_type == "DequantizeLinear"
            if dequantized and made_by is not None and made_by.input[0] in initializers:
                found[name] = "int8"
            elif node.input[1] in initializers:
                found[name] = "fp32"
    return found


def quantize_mixer(out: Path, **settings: object):  # type: ignore[no-untyped-def]
    return run_recipe(
        Path("unused"),
        out,
        model=MIXER,
        stages=[FIXED_EXPORT, {"quantize": settings}],
        evaluate=EVAL,
        gates={},
    )


def test_override_by_module_path_survives_preprocessing_fusion(tmp_path: Path) -> None:
    """`mixer` names a torch module whose MatMul + Add quant_pre_process fuses into a new Gemm;
    the rule must keep that Gemm in float (it used to be resolved on the graph before fusion,
    so the fused Gemm was quantized and the rule silently lost)."""
    report, _ = quantize_mixer(tmp_path, overrides=[{"match": "mixer", "precision": "fp32"}])
    found = node_precisions(tmp_path / "model.int8.onnx")
    assert found[FUSED] == "fp32"
    assert found["/features/features.0/Conv"] == "int8"
    assert found["/classifier/classifier.1/Gemm"] == "int8"
    assert report.stages[1].details["kept_float"] == [FUSED]


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (  # by node name of the graph that is quantized (the fused Gemm's new name)
            [{"match": FUSED}],
            {FUSED: "fp32", "/classifier/classifier.1/Gemm": "int8"},
        ),
        (  # by regex: first rule wins, int8 re-includes one layer a later fp32 rule covers
            [
                {"match": "classifier.3", "precision": "int8"},
                {"match": r"re:/classifier/.*", "precision": "fp32"},
            ],
            {
                "/classifier/classifier.1/Gemm": "fp32",
                "/classifier/classifier.3/Gemm": "int8",
                FUSED: "int8",
            },
        ),
        (  # by op type
            [{"match": "type:Conv"}],
            {"/features/features.0/Conv": "fp32", "/classifier/classifier.1/Gemm": "int8"},
        ),
        (  # a Gemm by module path: quantize_dynamic renames Gemms before reading exclusions
            [{"match": "classifier.1"}],
            {"/classifier/classifier.1/Gemm": "fp32", "/classifier/classifier.3/Gemm": "int8"},
        ),
    ],
    ids=["name", "regex", "type", "gemm"],
)
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_rules_give_the_node_precisions_in_the_graph(
    tmp_path: Path, rules: list[dict[str, str]], expected: dict[str, str], mode: str
) -> None:
    report, _ = quantize_mixer(tmp_path, mode=mode, overrides=rules)
    found = node_precisions(tmp_path / "model.int8.onnx")
    assert {name: found.get(name) for name in expected} == expected
    kept = set(report.stages[1].details["kept_float"])  # the regex also keeps Flatten, Relu
    assert {n for n, p in expected.items() if p == "fp32"} <= kept
    assert not {n for n, p in expected.items() if p == "int8"} & kept


def test_rule_matching_nothing_names_the_closest_layers(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"'clasifier\.1' matches no layer.*classifier\.1"):
        quantize_mixer(tmp_path, overrides=[{"match": "clasifier.1"}])
    with pytest.raises(UserError, match="'type:Con' matches no layer.*type:Conv"):
        quantize_mixer(tmp_path, overrides=[{"match": "type:Con"}])


def test_npu_variant_resolves_rules_on_its_own_graph(tmp_path: Path) -> None:
    """QNN pre-processing fuses the GELU's Erf into a new Gelu node: a rule on the Erf must keep
    that node in float in the NPU variant (it used to be resolved on the graph before QNN
    pre-processing, where the Gelu does not exist), and the classifier rule must hold there."""
    pytest.importorskip("onnxruntime_qnn")
    from modelquant.pipeline import Pipeline
    from modelquant.recipe import Recipe
    from tests.conftest import tiny_recipe_dict

    rules = [{"match": "re:.*Erf.*"}, {"match": "classifier.3"}]
    recipe = Recipe.model_validate(
        tiny_recipe_dict(
            Path("unused"),
            model=MIXER,
            stages=[{"export": {"opset": 17}}, {"quantize": {"overrides": rules}}],
            evaluate={**EVAL, "backends": ["cpu", "npu"]},
        )
    )
    # The stages alone: the emulated HTP cannot compile this model's 4-D MatMul to measure it.
    result = Pipeline(recipe, tmp_path / "recipe.yaml", tmp_path).run_stages()
    details = result.state.lineage[-1].details
    assert details["kept_float"] == ["/act/Erf", "/classifier/classifier.3/Gemm"]
    assert details["npu_variant"]["kept_float"] == [
        "/classifier/classifier.3/Gemm",
        "Gelu_fused_Erf_0",
    ]
    npu_path = result.state.variants["npu"]
    assert "Gelu" in {n.op_type for n in onnx.load(str(npu_path)).graph.node}
    found = node_precisions(npu_path)
    assert found["/classifier/classifier.3/Gemm"] == "fp32"
    assert found["/classifier/classifier.1/Gemm"] == "int8"


def test_calibration_cache_follows_the_data_contents(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Same data spec (one .npz path), other contents: the ranges must be computed again (the
    key used to be the spec, so stale ranges were reused)."""
    import numpy as np

    from modelquant.data import digits

    train = digits.load("train").inputs["input"]
    npz = tmp_path / "calibration.npz"
    data = {
        "train": {"source": "digits", "split": "train"},
        "calibration": {"source": "npz", "path": str(npz)},
        "evaluation": {"source": "digits", "split": "test"},
    }
    runs = []
    # the third run changes a setting so that the stage runs again, on the second's contents
    for rows, per_channel in (
        (slice(0, 64), True),
        (slice(64, 128), True),
        (slice(64, 128), False),
    ):
        np.savez(npz, input=train[rows])
        report, _ = run_recipe(
            tiny_checkpoint,
            tmp_path / "out",
            data=data,
            stages=[{"export": {}}, {"quantize": {"per_channel": per_channel}}],
            evaluate=EVAL,
        )
        runs.append(report.stages[1].details["calibration"]["cache"])
    assert runs == ["computed", "computed", "reused"]
