"""Calibration for static schemes: its settings, the reader of equal-shaped batches that
onnxruntime's calibrators consume, and the content key of the ranges they compute."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelquant.errors import UserError

if TYPE_CHECKING:
    from modelquant.data import Dataset
    from modelquant.stages.base import StageContext

DEFAULT_CALIBRATION_SAMPLES = 256


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["minmax", "percentile", "entropy"] = Field(
        "minmax", description="How activation ranges are chosen from calibration data."
    )
    percentile: float = Field(
        99.999, gt=0, le=100, description="Percentile kept by the 'percentile' method."
    )
    symmetric: bool = Field(False, description="Force ranges symmetric around zero.")
    samples: int | None = Field(
        None, gt=0, description="Calibration samples (default: data.calibration.samples or 256)."
    )


def calibration_method(name: str) -> Any:
    """onnxruntime's CalibrationMethod for a method name of the recipe."""
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
        "distribution": CalibrationMethod.Distribution,
    }[name]


class CalibrationReader:
    """An onnxruntime CalibrationDataReader over equal-shaped batches of a Dataset (histogram
    calibrators fail on ragged ones), so the last partial batch is dropped."""

    def __init__(self, data: Dataset, batch_size: int, names: list[str]) -> None:
        self.batch_size = batch_size
        self._fed = (data.content_hash(), names, batch_size)
        self._batches = [
            {n: b[n] for n in names} for b, _ in data.batches(batch_size, drop_last=True)
        ]
        self._it = iter(self._batches)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def samples(self) -> int:
        return len(self._batches) * self.batch_size

    def content_hash(self) -> str:
        """What is fed, by content: the data's own hash, the inputs read and the batch size
        (together they fix every batch)."""
        return hashlib.sha256(json.dumps(self._fed).encode()).hexdigest()


def calibration_reader(
    model: Path,
    calibration: CalibrationConfig,
    ctx: StageContext,
    batch_size: int | None = None,
) -> CalibrationReader:
    """The reader over the recipe's calibration data for `model`'s inputs. Batch size: the data
    entry's, clipped to the sample count, unless the caller fixes it (static-shape variants)."""
    from modelquant.models import onnx_file

    spec = ctx.data_spec("calibration")
    if spec is None:
        raise UserError("static quantization needs data.calibration (or data.train)")
    samples = calibration.samples or spec.samples or DEFAULT_CALIBRATION_SAMPLES
    data = ctx.data("calibration").take(samples)
    names = list(onnx_file.input_names(model))
    missing = [n for n in names if n not in data.inputs]
    if missing:
        raise UserError(f"calibration data has no input(s) {missing} that the model takes")
    if batch_size is None:
        batch_size = _fixed_batch(model)
    batch = batch_size if batch_size is not None else min(spec.batch_size, len(data))
    reader = CalibrationReader(data, max(batch, 1), names)
    if len(reader) == 0:
        raise UserError(
            f"calibration data has {len(data)} sample(s), fewer than one batch of {batch}"
        )
    return reader


def _fixed_batch(model: Path) -> int | None:
    """The batch size a model's first input is fixed to at export, if it is (then every
    calibration batch must have it)."""
    import onnx

    from modelquant.models.onnx_file import graph_inputs

    inputs = graph_inputs(onnx.load(str(model), load_external_data=False).graph)
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
        return int(dims[0].dim_value)
    return None


def ranges_key(model: Path, reader: CalibrationReader, calibration: CalibrationConfig) -> str:
    """Key of the activation ranges: they depend on the model's bytes, the batches fed, the
    calibration method and onnxruntime, nothing else (not on how the data was named)."""
    import onnxruntime

    from modelquant.models import onnx_file

    settings = calibration.model_dump(mode="json", exclude={"samples"})  # the batches say it
    return hashlib.sha256(
        json.dumps(
            {
                "model": onnx_file.content_hash(model),
                "data": reader.content_hash(),
                "calibration": settings,
                "onnxruntime": onnxruntime.__version__,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]


def activation_ranges(
    model: Path, reader: CalibrationReader, calibration: CalibrationConfig, cache_dir: Path
) -> dict[str, tuple[float, float]]:
    """Tensor name -> (low, high) computed by onnxruntime's calibrator for `calibration.method`,
    cached by content like the scheme's own ranges: how a layer rule's calibration method reaches
    the quantizer (as `rmin`/`rmax` overrides of that layer's tensors)."""
    import tempfile

    from onnxruntime.quantization.calibrate import create_calibrator

    cache = cache_dir / "calibration" / f"{ranges_key(model, reader, calibration)}.ranges.json"
    if cache.is_file():
        return {k: (v[0], v[1]) for k, v in json.loads(cache.read_text()).items()}
    extra: dict[str, Any] = {"symmetric": calibration.symmetric}
    if calibration.method == "percentile":
        extra["percentile"] = calibration.percentile
    with tempfile.TemporaryDirectory(prefix="mq-calib-") as tmp:
        calibrator = create_calibrator(
            model,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=calibration_method(calibration.method),
            extra_options=extra,
        )
        reader.rewind()
        calibrator.collect_data(reader)
        data = calibrator.compute_data()
        reader.rewind()
    ranges = {
        name: (float(_scalar(t.range_value[0])), float(_scalar(t.range_value[1])))
        for name, t in data.data.items()
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = cache.with_name(f".{cache.name}.tmp")
    tmp_file.write_text(json.dumps(ranges, sort_keys=True))
    tmp_file.replace(cache)
    return ranges


def _scalar(value: Any) -> float:
    import numpy as np

    return float(np.asarray(value).reshape(-1)[0])
