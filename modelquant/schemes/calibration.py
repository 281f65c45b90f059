"""Calibration for static schemes: its settings, the reader of equal-shaped batches that
onnxruntime's calibrators consume, and the content key of the ranges they compute."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
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
    bins: int | None = Field(
        None,
        ge=128,
        description="Histogram bins of the percentile and entropy methods (default: 2048 and 512). "
        "onnxruntime's quantize_static leaves entropy at 128 bins, where its threshold search has "
        "one candidate, the full range: entropy then equals minmax.",
    )
    stream_batches: int = Field(
        8,
        gt=0,
        description="Calibration batches whose activations are held in memory at once; the "
        "calibrator folds them into its ranges or histograms, then takes the next ones (for the "
        "histogram methods the first chunk sets the histogram's range, later ones extend it).",
    )

    def histogram_bins(self) -> int:
        """The bins the histogram methods use."""
        return self.bins or {"entropy": 512}.get(self.method, 2048)


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
        self._data = data
        self._names = names
        self._fed = (data.content_hash(), names, batch_size)
        self._count = len(data) // batch_size
        self._stop: int | None = None
        self.rewind()

    def _batches(self) -> Iterator[dict[str, Any]]:
        for batch, _ in self._data.batches(self.batch_size, drop_last=True, bucketed=False):
            yield {n: batch[n] for n in self._names}

    def get_next(self) -> dict[str, Any] | None:
        if self._stop is not None and self._served >= self._stop:
            return None
        batch = next(self._it, None)
        if batch is not None:
            self._served += 1
        return batch

    def rewind(self) -> None:
        self._it = self._batches()
        self._served = 0
        self._stop = None

    def chunks(self, size: int) -> Iterator[CalibrationReader]:
        """The reader itself, `size` batches at a time: each chunk ends after `size` batches (the
        calibrator computes on what it holds) and the next resumes where it stopped."""
        self.rewind()
        while self._served < self._count:
            self._stop = self._served + size
            yield self
        self.rewind()

    def __len__(self) -> int:
        return self._count

    @property
    def served(self) -> int:
        """Batches handed out since the last rewind."""
        return self._served

    @property
    def samples(self) -> int:
        return self._count * self.batch_size

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


def content_key(model: Path, reader: CalibrationReader, settings: dict[str, Any]) -> str:
    """Key of what a calibrator computes from `model` and the reader's batches under `settings`:
    the model's bytes, the batches fed, the settings and onnxruntime, nothing else (not how the
    data was named)."""
    import onnxruntime

    from modelquant.models import onnx_file

    return hashlib.sha256(
        json.dumps(
            {
                "model": onnx_file.content_hash(model),
                "data": reader.content_hash(),
                **settings,
                "onnxruntime": onnxruntime.__version__,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]


def ranges_key(model: Path, reader: CalibrationReader, calibration: CalibrationConfig) -> str:
    """Key of the activation ranges: the calibration settings (the batches say the samples)."""
    settings = calibration.model_dump(mode="json", exclude={"samples"})
    return content_key(model, reader, {"calibration": settings})


def compute_ranges(
    model: Path, reader: CalibrationReader, calibration: CalibrationConfig, cache_dir: Path
) -> tuple[Path, bool]:
    """Run onnxruntime's calibrator for `calibration.method` over the reader and save the ranges
    in onnxruntime's calibration-cache format (`quantize_static(calibration_cache_path=...)`
    reads them back instead of calibrating); cached by content. Returns the file and whether it
    was already there.

    Calibrating here rather than inside quantize_static does two things quantize_static cannot:
    the histogram methods get their bins (`histogram_bins`), and activations are held
    `stream_batches` batches at a time (min-max folds them into running ranges, the histogram
    methods into their histograms), so memory follows the batch size, not the sample count."""
    import tempfile

    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    from modelquant import progress
    from modelquant.pipeline.artifacts import atomic_target

    cache = cache_dir / "calibration" / f"{ranges_key(model, reader, calibration)}.json"
    if cache.is_file():
        return cache, True
    extra: dict[str, Any] = {"symmetric": calibration.symmetric}
    if calibration.method != "minmax":
        extra["num_bins"] = calibration.histogram_bins()
        extra["num_quantized_bins"] = 128
        if calibration.method == "percentile":
            extra["percentile"] = calibration.percentile
    with (
        tempfile.TemporaryDirectory(prefix="mq-calib-") as tmp,
        progress.task(
            f"calibrating ({calibration.method})", total=len(reader), unit="batches"
        ) as bar,
    ):
        calibrator = create_calibrator(
            model,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=calibration_method(calibration.method),
            extra_options=extra,
        )
        # Each call folds its batches into the running ranges (min-max) or histograms and drops
        # them. (min-max's own max_intermediate_outputs drops batches without folding them.)
        for chunk in reader.chunks(calibration.stream_batches):
            calibrator.collect_data(chunk)
            bar.update(reader.served)
        data = calibrator.compute_data()
        del calibrator
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(cache) as partial:  # Ctrl-C while saving leaves no partial file
        save_tensors_data(data, partial)
    return cache, False


def activation_ranges(
    model: Path, reader: CalibrationReader, calibration: CalibrationConfig, cache_dir: Path
) -> dict[str, tuple[float, float]]:
    """Tensor name -> (low, high) for `calibration.method` (see `compute_ranges`): how a layer
    rule's calibration method reaches the quantizer (as `rmin`/`rmax` overrides of that layer's
    tensors)."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    path, _ = compute_ranges(model, reader, calibration, cache_dir)
    return {
        name: (_scalar(t.range_value[0]), _scalar(t.range_value[1]))
        for name, t in load_tensors_data(path).data.items()
    }


def _scalar(value: Any) -> float:
    import numpy as np

    return float(np.asarray(value).reshape(-1)[0])
