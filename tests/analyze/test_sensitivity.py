"""`modelquant.sensitivity`: ranking by each layer's own error, and node names the quantize
stage's layer rules accept (the accuracy-aware fallback's input)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from modelquant.pipeline import Pipeline
from modelquant.recipe import Recipe
from modelquant.sensitivity import _Layer, _ranked, rank_layers
from modelquant.stages.quantize import Quantize, QuantizeConfig
from tests.conftest import tiny_recipe_dict


def layer(name: str, own: float, accumulated: float, index: int) -> _Layer:
    values: dict[str, float | None] = {
        "activation_sqnr_db": own,
        "activation_sqnr_accumulated_db": accumulated,
        "weight_sqnr_db": 40.0,
    }
    return _Layer(name, "Conv", [name], f"{name}.w", f"{name}.out", index, values)


def test_ranked_by_own_error_not_the_accumulated_one() -> None:
    # accumulated error grows down the network; the own error says which layer to keep float
    layers = [layer("a", 30.0, 45.0, 0), layer("b", 45.0, 35.0, 1), layer("c", 40.0, 30.0, 2)]
    assert [x.node for x in _ranked(layers, by_metric=False)] == ["a", "c", "b"]


def test_ranked_by_metric_delta_then_output_sqnr() -> None:
    layers = [layer("a", 30.0, 30.0, 0), layer("b", 45.0, 45.0, 1), layer("c", 40.0, 40.0, 2)]
    deltas = {"a": 0.0, "b": -0.01, "c": 0.0}
    outputs = {"a": 50.0, "b": 60.0, "c": 40.0}
    for x in layers:
        x.values.update(metric_delta=deltas[x.node], output_sqnr_db=outputs[x.node])
    assert [x.node for x in _ranked(layers, by_metric=True)] == ["b", "c", "a"]


def test_rank_layers_names_nodes_the_quantize_rules_accept(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    recipe = Recipe.model_validate(tiny_recipe_dict(tiny_checkpoint, stages=[{"export": {}}]))
    pipeline = Pipeline(recipe, tmp_path / "recipe.yaml", tmp_path)
    result = pipeline.run_stages()
    assert result.state.onnx_path is not None
    work = tmp_path / "work"
    work.mkdir()
    ctx = dataclasses.replace(pipeline.context(result.baseline), work_dir=work)
    ranked = rank_layers(result.state.onnx_path, QuantizeConfig(), ctx, samples=32)
    assert len(ranked) == 3
    worst = ranked[0].node
    # the fallback keeps the worst layer float by its exact node name
    cfg = QuantizeConfig.model_validate({"overrides": [{"match": worst, "precision": "fp32"}]})
    Quantize(cfg).run(result.state, ctx)
    assert ctx.details["kept_float"] == [worst]


def test_every_field_of_sensitivity_json_is_documented() -> None:
    from modelquant.sensitivity import AccuracyData, ActivationData, LayerSensitivity, Sensitivity

    docs = (Path(__file__).resolve().parents[2] / "docs" / "sensitivity.md").read_text()
    for model in (Sensitivity, LayerSensitivity, AccuracyData, ActivationData):
        for field in model.model_fields:
            assert re.search(rf"[`{{ ]{field}[`:,}}]", docs), field
