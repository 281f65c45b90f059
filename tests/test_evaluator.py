"""The evaluator: `score` (the metric alone), the evaluation batch size, one model timed once."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from modelquant import evaluator
from modelquant.backends import bench
from modelquant.backends.cpu import CpuBackend
from modelquant.cli import app
from modelquant.data import Dataset, digits
from modelquant.recipe import EvaluateConfig
from tests.tiny_models import build

QUICK = EvaluateConfig(batch_sizes=[1, 4], warmup=0, repeats=3, block=3, threads=1)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("evaluator") / "m.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(path)
    return path


def _export(path: Path) -> None:
    torch.onnx.export(
        build().eval(),
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}},
        dynamo=False,
    )


@pytest.fixture(scope="module")
def data() -> Dataset:
    return digits.load("test").take(100)


class _Spy:
    """A session that records how many samples each run was fed."""

    def __init__(self, session: Any, fed: list[int]) -> None:
        self.session, self.fed = session, fed

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def run(self, names: Any, feed: Mapping[str, np.ndarray]) -> Any:
        self.fed.append(len(next(iter(feed.values()))))
        return self.session.run(names, feed)


@pytest.fixture
def fed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    opened = CpuBackend.session

    def session(self: CpuBackend, path: Path, threads: int | None, **kw: Any) -> Any:
        return _Spy(opened(self, path, threads, **kw), sizes)

    monkeypatch.setattr(CpuBackend, "session", session)
    return sizes


@pytest.fixture
def timed_roles(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The models each call of the one timing loop timed together."""
    calls: list[list[str]] = []
    real = bench.time_alternating

    def spy(runs: Mapping[str, Callable[[], object]], **kw: Any) -> dict[str, bench.Timed]:
        calls.append(list(runs))
        return real(runs, **kw)

    monkeypatch.setattr(bench, "time_alternating", spy)
    return calls


def test_score_is_top1_on_the_backend_and_times_nothing(
    tiny_onnx: Path, data: Dataset, timed_roles: list[list[str]]
) -> None:
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": data.inputs["input"]})[0]
    assert data.labels is not None
    expected = float(np.mean(logits.argmax(axis=1) == data.labels))
    assert evaluator.score(tiny_onnx, data) == pytest.approx(expected)
    assert evaluator.score(tiny_onnx, data, "cpu", batch_size=7) == pytest.approx(expected)
    assert timed_roles == []


def test_evaluation_feeds_the_recipes_batch_size(
    tiny_onnx: Path, data: Dataset, fed: list[int]
) -> None:
    evaluator.score(tiny_onnx, data, batch_size=8)
    assert fed == [8] * 12 + [4]  # 100 samples
    fed.clear()
    cfg = EvaluateConfig(batch_sizes=[1], warmup=0, repeats=1, block=1, threads=1)
    evaluator.evaluate_models(tiny_onnx, tiny_onnx, data, cfg, {}, batch_size=8)
    predicted = [n for n in fed if n != 1]  # the rest are timing runs at batch 1
    assert predicted == [8] * 12 + [4]  # once: the CPU outputs of one file are reused


def test_evaluate_verb_times_one_model_once(
    write_recipe: Callable[..., Path],
    tiny_onnx: Path,
    timed_roles: list[list[str]],
    fed: list[int],
) -> None:
    recipe = write_recipe()
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(recipe),
            "--model",
            str(tiny_onnx),
            "--json",
            "--set",
            "evaluate.repeats=3",
            "--set",
            "evaluate.batch_sizes=[1, 4]",
            "--set",
            "data.evaluation.batch_size=16",
        ],
    )
    assert result.exit_code == 0, result.output
    assert timed_roles == [["model"], ["model"]]  # batch 1 and 4, one model each
    assert 16 in fed and 32 not in fed  # predictions fed the recipe's batch size


def test_evaluate_model_reports_effective_threads(tiny_onnx: Path, data: Dataset) -> None:
    cfg = QUICK.model_copy(update={"threads": None})
    result = evaluator.evaluate_model(tiny_onnx, data, cfg, {})
    stats = result.backends["cpu"].latency_ms["1"]
    assert stats.threads == bench.physical_cores() and "physical core" in stats.threads_source
    assert stats.runs == 3 and stats.cold_p50 is not None
