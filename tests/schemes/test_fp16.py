"""precision fp16: onnxruntime's float16 converter over the whole model, or only over the layers
a rule names (an fp16 head in an int8 QDQ model), every other node left as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from modelquant.errors import UserError
from modelquant.schemes.fp16 import NOTE
from tests.pipeline_runs import run_recipe
from tests.schemes.test_int4 import CNN, EVAL, graph

HEAD = "/classifier/classifier.3/Gemm"
CONVS = [f"/features/features.{i}/Conv" for i in (0, 2, 4)]


def compress(
    out: Path, checkpoint: Path, model: dict[str, str] | None = None, **quantize: Any
) -> Any:
    """Export and quantize the tiny CNN of `checkpoint`, or `model` when given."""
    changes: dict[str, Any] = {"model": model} if model else {}
    report, _ = run_recipe(
        checkpoint,
        out,
        stages=[{"export": {}}, {"quantize": quantize}],
        evaluate=EVAL,
        gates={},
        **changes,
    )
    return report


def weight_types(g: Any) -> dict[str, int]:
    """Node name -> element type of its weight (input 1) where that is an initializer."""
    inits = {t.name: t.data_type for t in g.initializer}
    return {n.name: inits[n.input[1]] for n in g.node if len(n.input) > 1 and n.input[1] in inits}


def io_types(g: Any) -> set[int]:
    return {v.type.tensor_type.elem_type for v in (*g.input, *g.output)}


def test_whole_model_to_fp16(tmp_path: Path, tiny_checkpoint: Path) -> None:
    report = compress(tmp_path, tiny_checkpoint, precision="fp16")
    g = graph(tmp_path, report)
    types = weight_types(g)
    assert types and set(types.values()) == {TensorProto.FLOAT16}
    assert io_types(g) == {TensorProto.FLOAT}  # keep_io_types: callers still feed float32
    details = report.stages[1].details
    assert details["scheme"] == "fp16" and details["nodes_kept"] == 0
    assert details["note"] == NOTE and "slower" in NOTE
    assert report.baseline.accuracy - report.compressed.accuracy <= 0.01
    before = onnx.load(str(tmp_path / report.artifacts["baseline"])).graph.initializer
    assert sum(len(t.raw_data) for t in g.initializer) * 2 == sum(len(t.raw_data) for t in before)


def test_fp32_rule_inside_an_fp16_model(tmp_path: Path, tiny_checkpoint: Path) -> None:
    rules = [{"match": "classifier.3", "precision": "fp32"}]
    report = compress(tmp_path, tiny_checkpoint, precision="fp16", overrides=rules)
    types = weight_types(graph(tmp_path, report))
    tiny_head = "/classifier/classifier.3/Gemm"
    assert types.pop(tiny_head) == TensorProto.FLOAT
    assert set(types.values()) == {TensorProto.FLOAT16}
    assert report.stages[1].details["kept_float"] == [tiny_head]


@pytest.mark.parametrize("match", [r"re:.*classifier\.3.*", HEAD], ids=["regex", "node"])
def test_int8_body_with_an_fp16_head(tmp_path: Path, match: str) -> None:
    """The digits CNN: static int8 QDQ everywhere but the last Gemm, which is fp16. The Q/DQ
    nodes and the int8 layers stay exactly as the int8 pass wrote them."""
    report = compress(
        tmp_path,
        Path("unused"),
        CNN,
        mode="static",
        overrides=[{"match": match, "precision": "fp16"}],
    )
    g = graph(tmp_path, report)  # checker passes, the CPU EP loads it
    types = weight_types(g)
    assert types[HEAD] == TensorProto.FLOAT16
    producer = {o: n for n in g.node for o in n.output}
    for conv in CONVS:  # int8 weights, read through float32 DequantizeLinear
        made_by = producer[next(n for n in g.node if n.name == conv).input[1]]
        assert made_by.op_type == "DequantizeLinear"
        assert types[made_by.name] == TensorProto.FLOAT  # its scale
    scales = {n.input[1] for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    inits = {t.name: t.data_type for t in g.initializer}
    assert {inits[s] for s in scales} == {TensorProto.FLOAT}
    # one Cast into the head, one out of it to the float32 output: no round trips elsewhere
    assert sum(n.op_type == "Cast" for n in g.node) == 2
    assert io_types(g) == {TensorProto.FLOAT}
    details = report.stages[1].details
    assert details["precision_map"] == {HEAD: "fp16"}
    assert details["rule_schemes"]["fp16"]["nodes_fp16"] == 1
    assert details["note"] == NOTE
    assert report.baseline.accuracy - report.compressed.accuracy <= 0.005


def test_fp16_rule_on_a_blocked_op_type_is_bad_input(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(UserError, match=r"fp16 cannot take /features/features\.1/Relu \(Relu\)"):
        compress(
            tmp_path,
            tiny_checkpoint,
            precision="fp32",
            fp16={"op_block_list": ["Relu"]},
            overrides=[{"match": "type:Relu", "precision": "fp16"}],
        )


def test_keep_io_types_false_makes_the_interface_fp16(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    from modelquant.schemes import QuantPlan
    from modelquant.schemes.fp16 import Fp16Config, quantize
    from modelquant.stages.base import StageContext

    report = compress(tmp_path, tiny_checkpoint, precision="fp32")
    source = tmp_path / report.artifacts["compressed"]
    ctx = StageContext(seed=0, data=None, data_spec=None, baseline=None)  # type: ignore[arg-type]
    out = tmp_path / "half.onnx"
    quantize(source, out, QuantPlan(Fp16Config(keep_io_types=False)), ctx)
    onnx.checker.check_model(str(out))
    ort.InferenceSession(str(out))
    assert io_types(onnx.load(str(out)).graph) == {TensorProto.FLOAT16}


def test_int8_rules_inside_an_fp16_model(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """The int8 pass runs first; the fp16 pass that follows must leave its Q/DQ nodes (new
    names no rule knows) in float32."""
    rules = [{"match": "type:Conv", "precision": "int8"}]
    report = compress(tmp_path, tiny_checkpoint, precision="fp16", overrides=rules)
    g = graph(tmp_path, report)
    types = weight_types(g)
    assert types["/classifier/classifier.1/Gemm"] == TensorProto.FLOAT16
    conv = next(n for n in g.node if n.op_type == "Conv")
    producer = {o: n for n in g.node for o in n.output}
    assert producer[conv.input[1]].op_type == "DequantizeLinear"
    inits = {t.name: t.data_type for t in g.initializer}
    scales = {n.input[1] for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert {inits[s] for s in scales} == {TensorProto.FLOAT}
    assert report.baseline.accuracy - report.compressed.accuracy <= 0.02


def test_fp16_rule_on_a_layer_without_weights(tmp_path: Path, tiny_checkpoint: Path) -> None:
    rules = [{"match": "classifier.2", "precision": "fp16"}]  # the ReLU between the Linears
    report = compress(tmp_path, tiny_checkpoint, precision="fp32", overrides=rules)
    g = graph(tmp_path, report)
    relu = next(n for n in g.node if n.name == "/classifier/classifier.2/Relu")
    producer = {o: n for n in g.node for o in n.output}
    cast = producer[relu.input[0]]
    assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT16
    assert set(weight_types(g).values()) == {TensorProto.FLOAT}  # the Linears stay float32
    assert abs(report.compressed.accuracy - report.baseline.accuracy) <= 0.005


def test_fp16_storage_with_float32_compute(tmp_path: Path) -> None:
    """`fp16: {compute: float32}`: the head's weight is stored as float16 behind one Cast back to
    float32 under its own name, so the Gemm computes in float32 (no Casts on activations); the
    file is smaller than with the head in fp32, and the outputs match that float32 head closely."""
    rule = [{"match": HEAD, "precision": "fp16"}]
    report = compress(
        tmp_path / "half",
        Path("unused"),
        CNN,
        mode="static",  # both files from one scheme: mode auto may pick another for each
        overrides=rule,
        fp16={"compute": "float32"},
    )
    g = graph(tmp_path / "half", report)  # checker passes, the CPU EP loads it
    head = next(n for n in g.node if n.name == HEAD)
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    cast = producer[head.input[1]]
    assert cast.op_type == "Cast" and inits[cast.input[0]].data_type == TensorProto.FLOAT16
    assert sum(n.op_type == "Cast" for n in g.node) == 1  # activations stay float32
    details = report.stages[1].details
    assert details["precision_map"] == {HEAD: "fp16"}
    assert details["rule_schemes"]["fp16"]["weights_fp16"] == 1
    assert "note" not in details or details["note"] != NOTE  # no "fp16 is slow on CPUs" here

    full = compress(
        tmp_path / "full",
        Path("unused"),
        CNN,
        mode="static",
        overrides=[dict(rule[0], precision="fp32")],
    )
    half_size = (tmp_path / "half" / report.artifacts["compressed"]).stat().st_size
    full_size = (tmp_path / "full" / full.artifacts["compressed"]).stat().st_size
    assert half_size < full_size
    assert abs(report.compressed.accuracy - full.compressed.accuracy) <= 1 / 450
