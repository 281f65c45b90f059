"""The prune stage: magnitude (global/layer), 2:4, structured; schedules; its contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from pydantic import ValidationError
from safetensors.torch import load_file

from modelquant.data import digits
from modelquant.errors import UserError
from modelquant.stages.prune import PruneConfig, ramp, semi_structured_mask
from modelquant.state import export_onnx
from tests.pipeline_runs import run_stage
from tests.tiny_models import build

TARGETED = ("features.0", "classifier.1", "classifier.3")


def trained(checkpoint: Path) -> torch.nn.Module:
    model = build(8, 32)
    model.load_state_dict(load_file(str(checkpoint)))
    return model.eval()


def prune(checkpoint: Path, tmp_path: Path, **config: object):  # type: ignore[no-untyped-def]
    return run_stage("prune", dict(config), trained(checkpoint), checkpoint, tmp_path)


def test_global_magnitude_reaches_the_asked_sparsity(tiny_checkpoint: Path, tmp_path: Path) -> None:
    baseline = trained(tiny_checkpoint)
    model, details = run_stage("prune", {"sparsity": 0.5}, baseline, tiny_checkpoint, tmp_path)
    assert abs(details["reached_sparsity"] - 0.5) <= 0.01
    assert set(details["per_layer_sparsity"]) == set(TARGETED)
    # one global threshold: layers end up with different sparsities
    assert len({round(v, 2) for v in details["per_layer_sparsity"].values()}) > 1
    assert details["params_after"] == details["params_before"]
    assert details["nonzero_params_after"] < details["nonzero_params_before"] * 0.6
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())  # masks made permanent
    assert float((baseline.classifier[1].weight == 0).float().mean()) == 0.0  # baseline untouched


def test_layer_scope_prunes_each_layer_alike(tiny_checkpoint: Path, tmp_path: Path) -> None:
    _, details = prune(tiny_checkpoint, tmp_path, sparsity=0.6, scope="layer")
    for value in details["per_layer_sparsity"].values():
        assert abs(value - 0.6) <= 0.01


def test_ignore_rules_and_their_errors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    _, details = prune(tiny_checkpoint, tmp_path, ignore=["re:classifier\\.3", "type:Conv2d"])
    assert set(details["per_layer_sparsity"]) == {"classifier.1"}
    with pytest.raises(UserError, match=r"\['re:head.\*'\] match no layer"):
        prune(tiny_checkpoint, tmp_path, ignore=["re:head.*"])


def test_finetune_recovers_accuracy(tiny_checkpoint: Path, tmp_path: Path) -> None:
    _, details = prune(tiny_checkpoint, tmp_path, sparsity=0.8, finetune={"epochs": 2, "lr": 0.005})
    assert abs(details["reached_sparsity"] - 0.8) <= 0.01  # fine-tuning kept the zeros
    assert details["accuracy_after"] >= details["accuracy_pruned_before_finetune"]
    assert details["finetune"][0]["epochs"] == 2


def test_gradual_schedule_ramps_to_the_target(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert ramp(0.8, 1, 4, "cubic") > ramp(0.8, 1, 4, "linear")  # cubic prunes fast first
    assert ramp(0.8, 4, 4, "cubic") == pytest.approx(0.8)
    schedule = {"kind": "gradual", "steps": 3, "ramp": "cubic"}
    _, details = prune(
        tiny_checkpoint, tmp_path, sparsity=0.7, schedule=schedule, finetune={"epochs": 1}
    )
    assert abs(details["reached_sparsity"] - 0.7) <= 0.01
    assert len(details["finetune"]) == 3


def test_two_four_keeps_at_most_two_of_every_four(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model, details = prune(
        tiny_checkpoint, tmp_path, method="semi_structured", finetune={"epochs": 1}
    )
    for name in details["per_layer_sparsity"]:
        weight = (
            model.get_submodule(name)
            .weight.detach()
            .reshape(model.get_submodule(name).weight.shape[0], -1)
        )
        full = weight.shape[1] - weight.shape[1] % 4
        groups = weight[:, :full].reshape(weight.shape[0], -1, 4)
        assert int((groups != 0).sum(-1).max()) <= 2, name
    assert abs(details["reached_sparsity"] - 0.5) <= 0.01


def test_two_four_mask_handles_a_partial_group() -> None:
    mask = semi_structured_mask(torch.tensor([[4.0, -5.0, 1.0, 0.5, 3.0, -2.0]]))
    assert mask.tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]]


def test_structured_shrinks_the_exported_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model, details = prune(
        tiny_checkpoint, tmp_path, method="structured", sparsity=0.5, finetune={"epochs": 1}
    )
    assert details["params_after"] <= 0.6 * details["params_before"]
    assert details["shapes"]["classifier.3"]["after"][0] == 10  # the output layer keeps its classes
    sample = digits.load("test").take(4).inputs
    before = export_onnx(trained(tiny_checkpoint), sample, tmp_path / "a.onnx")
    after = export_onnx(model, sample, tmp_path / "b.onnx")

    def shapes(path: Path) -> dict[str, tuple[int, ...]]:
        return {
            t.name: numpy_helper.to_array(t).shape for t in onnx.load(str(path)).graph.initializer
        }

    a, b = shapes(before), shapes(after)
    assert b["features.0.weight"][0] < a["features.0.weight"][0]
    assert b["classifier.1.weight"][1] < a["classifier.1.weight"][1]


def test_prune_is_deterministic(tiny_checkpoint: Path, tmp_path: Path) -> None:
    config = {"sparsity": 0.5, "finetune": {"epochs": 1}}
    m1, _ = run_stage("prune", config, trained(tiny_checkpoint), tiny_checkpoint, tmp_path / "a")
    m2, _ = run_stage("prune", config, trained(tiny_checkpoint), tiny_checkpoint, tmp_path / "b")
    for (n, p1), (_, p2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert np.array_equal(p1.numpy(), p2.numpy()), n


def test_config_rejects_unknown_keys_and_bad_2_4() -> None:
    with pytest.raises(ValidationError):
        PruneConfig.model_validate({"sparsity": 0.5, "sparsty": 0.5})
    with pytest.raises(ValidationError, match="2 of every 4"):
        PruneConfig.model_validate({"method": "semi_structured", "sparsity": 0.3})
