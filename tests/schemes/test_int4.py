"""precision int4: weight-only MatMulNBits through onnxruntime's MatMulNBitsQuantizer, for the
whole model or by layer rule, on the digits MLP and CNN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from modelquant.errors import UserError
from modelquant.schemes import QuantPlan
from modelquant.schemes.int4 import Int4Config, quantize
from modelquant.stages.quantize import QuantizeConfig
from tests.pipeline_runs import run_recipe

PACKAGE = Path(__file__).resolve().parents[2] / "modelquant"
MLP = {
    "factory": "modelquant.examples.digits_mlp.model:build",
    "checkpoint": str(PACKAGE / "examples/digits_mlp/mlp.safetensors"),
}
CNN = {
    "factory": "modelquant.examples.digits.model:build",
    "checkpoint": str(PACKAGE / "examples/digits/cnn.safetensors"),
}
EVAL = {"backends": ["cpu"], "batch_sizes": [4], "warmup": 0, "repeats": 3, "block": 3}
GEMMS = ["/layers/layers.1/Gemm", "/layers/layers.3/Gemm", "/layers/layers.5/Gemm"]


def compress(out: Path, model: dict[str, str], **quantize: Any) -> Any:
    report, _ = run_recipe(
        Path("unused"),
        out,
        model=model,
        stages=[{"export": {}}, {"quantize": quantize}],
        evaluate=EVAL,
        gates={},
    )
    return report


def graph(out: Path, report: Any) -> Any:
    """The compressed model's graph, after checking it as a user's tools would."""
    path = out / report.artifacts["compressed"]
    onnx.checker.check_model(str(path))
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return onnx.load(str(path)).graph


def op_count(g: Any, op: str) -> int:
    return sum(1 for n in g.node if n.op_type == op)


def test_whole_mlp_to_int4(tmp_path: Path) -> None:
    report = compress(tmp_path, MLP, precision="int4")
    g = graph(tmp_path, report)
    nbits = {n.name: n for n in g.node if n.op_type == "MatMulNBits"}
    assert sorted(nbits) == [f"{name}_MatMul_Q4" for name in GEMMS]
    assert not {"Gemm", "MatMul", "Add"} & {n.op_type for n in g.node}  # biases folded in
    assert all(len(n.input) == 6 and n.input[5] for n in nbits.values())  # ... as MatMulNBits bias
    attrs = {a.name: a.i for a in nbits[f"{GEMMS[1]}_MatMul_Q4"].attribute}
    assert attrs["bits"] == 4 and attrs["block_size"] == 64 and attrs["K"] == attrs["N"] == 512
    details = report.stages[1].details
    assert details["nodes_converted"] == 3 and details["algorithm"] == "rtn"
    payload = details["payload_bytes"]
    assert payload["before"] == 300_032 * 4
    assert payload["after"] * 7 <= payload["before"]  # 4.5 bits per weight
    assert report.baseline.accuracy >= 0.97  # the shipped checkpoint
    assert report.baseline.accuracy - report.compressed.accuracy <= 0.01
    assert report.deltas.size_ratio < 0.15
    assert report.compressed.params == report.baseline.params  # packed weights still count


@pytest.mark.parametrize(
    ("rule", "converted"),
    [
        ({"match": "type:Gemm"}, GEMMS),
        ({"match": "layers.3"}, [GEMMS[1]]),  # torch module path
        ({"match": GEMMS[2]}, [GEMMS[2]]),  # ONNX node name
        ({"match": r"re:/layers/layers\.[15]/Gemm"}, [GEMMS[0], GEMMS[2]]),
    ],
    ids=["type", "module", "node", "regex"],
)
def test_rules_pick_the_int4_layers(
    tmp_path: Path, rule: dict[str, str], converted: list[str]
) -> None:
    report = compress(tmp_path, MLP, precision="fp32", overrides=[{**rule, "precision": "int4"}])
    g = graph(tmp_path, report)
    assert sorted(n.name for n in g.node if n.op_type == "MatMulNBits") == sorted(
        f"{name}_MatMul_Q4" for name in converted
    )
    assert op_count(g, "Gemm") == 3 - len(converted)  # the others are untouched
    said = report.stages[1].details["rule_schemes"]["int4"]
    assert said["converted"] == sorted(converted)
    assert report.stages[1].details["precision_map"] == dict.fromkeys(converted, "int4")
    assert report.baseline.accuracy - report.compressed.accuracy <= 0.01


def test_int4_on_a_conv_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(
        UserError,
        match=r"int4 cannot take /features/features\.0/Conv \(Conv\).*"
        r"MatMul or Gemm with a constant 2-D weight",
    ):
        compress(tmp_path, CNN, overrides=[{"match": "features.0", "precision": "int4"}])


def test_int8_convs_with_an_int4_head(tmp_path: Path) -> None:
    """The mixed map: int4 runs first on the float graph, then the int8 Q/DQ pass with the int4
    layers kept out of it; the stage's verification checks both."""
    rules = [{"match": "type:Gemm", "precision": "int4"}]
    report = compress(tmp_path, CNN, mode="static", overrides=rules)
    g = graph(tmp_path, report)
    heads = ["/classifier/classifier.1/Gemm", "/classifier/classifier.3/Gemm"]
    assert sorted(n.name for n in g.node if n.op_type == "MatMulNBits") == [
        f"{h}_MatMul_Q4" for h in heads
    ]
    producer = {o: n for n in g.node for o in n.output}
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert len(convs) == 3
    assert all(producer[c.input[1]].op_type == "DequantizeLinear" for c in convs)
    for node in g.node:  # no Q/DQ pair reads or writes the int4 layers' weights
        if node.op_type == "MatMulNBits":
            assert producer.get(node.input[1]) is None
    details = report.stages[1].details
    assert details["scheme"] == "int8_static" and details["rule_schemes"]["int4"]["nodes"] == 2
    assert report.baseline.accuracy - report.compressed.accuracy <= 0.01


@pytest.mark.parametrize("algorithm", ["hqq", "gptq"])
def test_other_algorithms(tmp_path: Path, algorithm: str) -> None:
    report = compress(tmp_path, MLP, precision="int4", int4={"algorithm": algorithm})
    g = graph(tmp_path, report)
    assert op_count(g, "MatMulNBits") == 3
    details = report.stages[1].details
    assert details["algorithm"] == algorithm
    assert details["symmetric"] is (algorithm != "hqq")
    assert report.baseline.accuracy - report.compressed.accuracy <= 0.01


def embedding_model(path: Path) -> Path:
    """Gather from a 50 x 64 table, mean over 5 tokens, MatMul 64 -> 64, Relu, MatMul 64 -> 10."""
    rng = np.random.default_rng(0)
    weights = {
        "emb.weight": rng.standard_normal((50, 64)),
        "proj.weight": rng.standard_normal((64, 64)) / 8,
        "head.weight": rng.standard_normal((64, 10)) / 8,
    }
    nodes = [
        helper.make_node("Gather", ["emb.weight", "ids"], ["e"], name="/emb/Gather"),
        helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0, name="/pool/Mean"),
        helper.make_node("MatMul", ["m", "proj.weight"], ["p"], name="/proj/MatMul"),
        helper.make_node("Relu", ["p"], ["r"], name="/act/Relu"),
        helper.make_node("MatMul", ["r", "head.weight"], ["out"], name="/head/MatMul"),
    ]
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "embedding",
            [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", 5])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", 10])],
            [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    onnx.save(model, str(path))
    return path


def run_handler(source: Path, out: Path, plan: QuantPlan[Int4Config]) -> dict[str, Any]:
    said = quantize(source, out, plan, None)  # type: ignore[arg-type]  # rtn reads no context
    onnx.checker.check_model(str(out))
    return said


def ops_by_name(path: Path) -> dict[str, str]:
    return {n.name: n.op_type for n in onnx.load(str(path)).graph.node}


def test_gather_becomes_gather_block_quantized(tmp_path: Path) -> None:
    source, out = embedding_model(tmp_path / "emb.onnx"), tmp_path / "emb.int4.onnx"
    said = run_handler(source, out, QuantPlan(Int4Config(gather=True, block_size=32)))
    ops = ops_by_name(out)
    assert ops["/emb/Gather_Q4"] == "GatherBlockQuantized"
    assert ops["/proj/MatMul_Q4"] == ops["/head/MatMul_Q4"] == "MatMulNBits"
    opsets = onnx.load(str(out)).opset_import
    assert max(o.version for o in opsets if o.domain == "") == 21  # INT4 tensors need it
    ids = np.random.default_rng(1).integers(0, 50, (8, 5))
    want = ort.InferenceSession(str(source)).run(None, {"ids": ids})[0]
    got = ort.InferenceSession(str(out)).run(None, {"ids": ids})[0]
    assert np.linalg.norm(want - got) < 0.2 * np.linalg.norm(want)  # 4-bit random weights
    assert said["converted"] == ["/emb/Gather", "/head/MatMul", "/proj/MatMul"]


def test_only_and_kept_float_are_honoured(tmp_path: Path) -> None:
    source = embedding_model(tmp_path / "emb.onnx")
    run_handler(source, tmp_path / "only.onnx", QuantPlan(Int4Config(), only=("/head/MatMul",)))
    ops = ops_by_name(tmp_path / "only.onnx")
    assert ops["/head/MatMul_Q4"] == "MatMulNBits"
    assert ops["/proj/MatMul"] == "MatMul" and ops["/emb/Gather"] == "Gather"
    plan = QuantPlan(Int4Config(), kept_float=("/head/MatMul",))
    run_handler(source, tmp_path / "kept.onnx", plan)
    ops = ops_by_name(tmp_path / "kept.onnx")
    assert ops["/proj/MatMul_Q4"] == "MatMulNBits" and ops["/head/MatMul"] == "MatMul"
    with pytest.raises(UserError, match=r"int4 cannot take /emb/Gather \(Gather\)"):
        run_handler(source, tmp_path / "x.onnx", QuantPlan(Int4Config(), only=("/emb/Gather",)))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"block_size": 48}, "power of two"),
        ({"block_size": 8}, "power of two"),
        ({"algorithm": "hqq", "symmetric": True}, "hqq is asymmetric only"),
        ({"algorithm": "gptq", "bits": 8}, "gptq writes 4-bit"),
        ({"bits": 2}, "bits"),
        ({"block": 64}, "block"),
    ],
)
def test_int4_settings_are_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        QuantizeConfig.model_validate({"precision": "int4", "int4": settings})


def test_int4_settings_live_in_their_section() -> None:
    cfg = QuantizeConfig.model_validate({"precision": "int4", "int4": {"block_size": 32}})
    assert cfg.scheme().name == "int4" and cfg.scheme_config().block_size == 32
    with pytest.raises(
        ValidationError, match="per_channel: not a setting of precision int4; its settings go under"
    ):
        QuantizeConfig.model_validate({"precision": "int4", "per_channel": False})
