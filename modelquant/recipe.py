"""The recipe: pydantic models, YAML loading with file:line errors, `--set` overrides, schema."""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from modelquant.backends import BACKEND_NAMES as BACKENDS
from modelquant.distributed import DistributedConfig
from modelquant.errors import UserError
from modelquant.models.spec import ModelSpec
from modelquant.report.diff import Thresholds
from modelquant.stages.base import StageConfig, registered_stages

EMULATED_BACKENDS = ("npu",)
DEFAULT_MIN_COSINE = 0.99
"""The gate a feature-extraction recipe gets when it sets no accuracy gate of its own."""


class _Strict(BaseModel):
    # NaN and infinity are never a meaningful threshold or count (a NaN gate can never be judged).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _data_sources_help() -> str:
    from modelquant.data.sources import registered_data_sources

    return "; ".join(
        f"{n} ({s.description.rstrip('.')})" for n, s in registered_data_sources().items()
    )


def _data_splits_help() -> str:
    from modelquant.data.sources import registered_data_sources

    with_splits = [(n, s.splits) for n, s in registered_data_sources().items() if s.splits]
    return "; ".join(f"{n}: {', '.join(splits)}" for n, splits in with_splits)


class DataSpec(_Strict):
    """One data entry: a source and what to read from it."""

    source: str = Field(description=f"Data source: {_data_sources_help()}.")
    split: str | None = Field(
        None,
        description=f"Split of a source that has splits ({_data_splits_help()}); required there.",
    )
    path: Path | None = Field(None, description="File for file sources (npz, csv).")
    inputs: list[str] | None = Field(
        None,
        description="Arrays (npz) or columns (csv) fed to the model (default: all but labels).",
    )
    labels: str | None = Field(
        None, description="Name of the labels array or column (default: 'labels' if present)."
    )
    input_name: str | None = Field(
        None,
        description="csv: name of the one input array the feature columns form (default: "
        "'input'; a model with one input gets it whatever its name).",
    )
    text: str | None = Field(
        None, description="text: the column (csv) or key (jsonl) holding the text (default 'text')."
    )
    text_pair: str | None = Field(
        None, description="text: the column holding the second text of a sentence pair."
    )
    max_length: int | None = Field(
        None, gt=1, le=8192, description="text: tokens per sample after truncation (default 128)."
    )
    padding: Literal["fixed", "bucket"] | None = Field(
        None,
        description="text: pad every sample to max_length (fixed, the default), or each "
        "evaluation batch to its longest sample rounded up to a multiple of 16 (bucket); "
        "calibration always sees fixed-length batches.",
    )
    tokenizer: str | None = Field(
        None,
        description="text: folder of the tokenizer (default: the recipe's hf model's own).",
    )
    generate: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="text: add this many texts made deterministically from the split's own "
        "sentences (clause recombination, word spans, sentence pairs, word dropout, templates) "
        "for training; a held-out split never contributes a word.",
    )
    samples: int | None = Field(None, gt=0, description="Read at most this many samples.")
    batch_size: int = Field(32, gt=0, description="Batch size for calibration and evaluation.")
    allow_overlap: bool = Field(
        False,
        description="Allow this entry to share rows with data.evaluation (refused by default: "
        "a report must not gate on data it was tuned on).",
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        from modelquant.data.sources import registered_data_sources

        sources = registered_data_sources()
        if v not in sources:
            raise ValueError(_unknown("data source", v, sources))
        return v

    @model_validator(mode="after")
    def _fits_source(self) -> DataSpec:
        from modelquant.data.sources import COMMON_FIELDS, registered_data_sources

        source = registered_data_sources()[self.source]
        if source.splits is None and self.split is not None:
            raise ValueError(f"source {self.source} has no splits; remove split: {self.split}")
        if source.splits is not None and self.split not in source.splits:
            got = "no split" if self.split is None else f"split '{self.split}'"
            raise ValueError(
                f"source {self.source} needs split: one of {', '.join(source.splits)} (got {got})"
            )
        ignored = sorted(
            name
            for name in self.model_fields_set - COMMON_FIELDS - source.fields
            if getattr(self, name) is not None
        )
        if ignored:
            raise ValueError(
                f"source {self.source} does not read {', '.join(ignored)}; remove it"
                + (f" (it reads {', '.join(sorted(source.fields))})" if source.fields else "")
            )
        return self


class DataSection(_Strict):
    """The recipe's data: what to train on, calibrate with, choose settings on, and evaluate on."""

    train: DataSpec | None = Field(None, description="Training data (fine-tuning, distillation).")
    validation: DataSpec | None = Field(
        None,
        description="Validation data: settings are chosen on it (fine-tuning progress, stage "
        "accuracies); never the gated test data.",
    )
    calibration: DataSpec | None = Field(
        None, description="Calibration data for static quantization (default: train, 256 samples)."
    )
    evaluation: DataSpec = Field(description="Evaluation data for accuracy (and latency inputs).")


class NpuEvaluateConfig(_Strict):
    """How the emulated NPU (Qualcomm HTP) backend is evaluated."""

    on_unsupported: Literal["fail", "skip"] = Field(
        "fail",
        description="When the HTP refuses nodes: fail the run (exit 3, listing them) or skip npu.",
    )
    samples: int | None = Field(
        None, gt=0, description="Cap on evaluation samples run on the emulator (it is slow)."
    )
    repeats: int = Field(
        20, gt=0, description="Cap on timed runs on the emulator (its latency is not gated)."
    )


class EvaluateConfig(_Strict):
    """How the baseline and the result are measured."""

    backends: list[str] = Field(
        default_factory=lambda: ["cpu"],
        description=f"Backends to measure on: {', '.join(BACKENDS)}.",
    )
    batch_sizes: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [1, 32], description="Batch sizes to time."
    )
    warmup: int = Field(
        10, ge=0, description="Untimed runs before timing, per model and batch size."
    )
    repeats: int = Field(100, gt=0, description="Timed runs per model and batch size.")
    block: int = Field(
        10, gt=0, description="Runs of one model before switching to the other (alternation)."
    )
    threads: int | None = Field(
        None, gt=0, description="Intra-op threads (default: the runtime's own choice)."
    )
    npu: NpuEvaluateConfig = Field(default_factory=NpuEvaluateConfig)

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in BACKENDS:
                raise ValueError(_unknown("backend", name, BACKENDS))
        if len(set(v)) != len(v) or not v:
            raise ValueError("list each backend once, at least one")
        return v


class GatesConfig(_Strict):
    """Pass/fail thresholds; a failed gate makes `compress` exit 1."""

    max_accuracy_drop: float | None = Field(
        None, ge=0, description="Largest allowed accuracy drop, as a fraction (0.01 = 1 point)."
    )
    min_speedup: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="Smallest allowed speedup per backend (lower bound of its 95% interval).",
    )
    speedup_batch_size: int | None = Field(
        None, gt=0, description="Batch size the speedup gate reads (default: the largest timed)."
    )
    max_size_ratio: float | None = Field(
        None, gt=0, description="Largest allowed compressed/baseline ONNX file size ratio."
    )
    min_cosine: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="feature-extraction: smallest allowed mean cosine of the embeddings to the "
        f"baseline's (default {DEFAULT_MIN_COSINE} when no other accuracy gate is set).",
    )
    min_cosine_p5: float | None = Field(
        None, ge=-1, le=1, description="feature-extraction: smallest allowed 5th-percentile cosine."
    )
    min_cosine_min: float | None = Field(
        None, ge=-1, le=1, description="feature-extraction: smallest allowed cosine of any sample."
    )
    min_neighbour_agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="feature-extraction: smallest allowed share of samples whose nearest "
        "neighbour is the baseline's.",
    )

    baseline: Thresholds = Field(
        default_factory=Thresholds,
        description="Thresholds against a stored report, judged only when `compress "
        "--baseline-report OLD.json` names one (gates baseline_accuracy_drop, "
        "baseline_size_growth, baseline_speedup_loss[backend,bs=N], and "
        "baseline_latency_regression[backend,bs=N] on the same CPU and thread count only); null "
        "turns one off.",
    )

    SIMILARITY_GATES: ClassVar[tuple[str, ...]] = (
        "min_cosine",
        "min_cosine_p5",
        "min_cosine_min",
        "min_neighbour_agreement",
    )


class OutputConfig(_Strict):
    """Where and in which formats the results go."""

    dir: Path | None = Field(None, description="Output folder (default: runs/<recipe name>).")
    formats: list[str] = Field(
        default_factory=lambda: ["json", "md"],
        description="Report formats (json, md, html, junit); report.json is always written.",
    )

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, v: list[str]) -> list[str]:
        from modelquant.report import file_renderers

        known = file_renderers()
        for fmt in v:
            if fmt not in known:
                raise ValueError(_unknown("report format", fmt, known))
        return v


class TrainConfig(_Strict):
    """How the torch stages (distill, prune fine-tuning) train, beyond their own settings."""

    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig,
        description="Data-parallel training when launched by torchrun (`torchrun "
        "--nproc_per_node N -m modelquant compress RECIPE`); ignored in a single process.",
    )


def _stage_item_type() -> Any:
    """A tagged union of one-key mappings `{stage_name: config}`, one tag per registered stage."""
    members = []
    for name, cls in registered_stages().items():
        item = create_model(  # type: ignore[call-overload]
            f"Stage_{name}",
            __config__=ConfigDict(extra="forbid"),
            **{name: (cls.Config, Field(description=(cls.__doc__ or "").strip().split("\n")[0]))},
        )
        members.append(Annotated[item, Tag(name)])

    def tag(value: Any) -> str | None:
        if isinstance(value, dict) and len(value) == 1:
            return str(next(iter(value)))
        if isinstance(value, BaseModel):
            return str(next(iter(type(value).model_fields)))
        return None

    return Annotated[Union[tuple(members)], Discriminator(tag)]  # noqa: UP007


StageItem = _stage_item_type()


class Recipe(_Strict):
    """A compression recipe: model, data, ordered stages, evaluation, gates and output."""

    name: str = Field(description="Recipe name (names the default output folder).")
    seed: int = Field(
        0,
        ge=0,
        lt=2**63,
        description="Seed for every random choice, so reruns give the same model.",
    )
    model: ModelSpec
    task: Literal["classification", "feature-extraction"] | None = Field(
        None,
        description="The task; picks the metric and the default gate. classification: top-1 "
        "accuracy; feature-extraction: cosine similarity of the sentence embeddings to the FP32 "
        "model's (mean, p5, min) and nearest-neighbour agreement. Default: an hf model's task "
        "(text-classification is classification), else classification.",
    )
    data: DataSection
    stages: list[StageItem] = Field(  # type: ignore[valid-type]
        default_factory=list, description="Stages run in order, each `{name: settings}`."
    )
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[\w.-]+", v):
            raise ValueError("use letters, digits, '.', '_' or '-' (it names a folder)")
        return v

    @property
    def metric_task(self) -> str:
        """The task that picks the metric: the recipe's, the hf model's, or classification."""
        from modelquant.tasks import HF_TASKS

        if self.task is not None:
            return self.task
        if self.model.hf is not None:
            return HF_TASKS.get(self.model.task or "feature-extraction", "classification")
        return "classification"

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        from modelquant.tasks import HF_TASKS

        if self.model.hf is not None:
            hf_task = self.model.task or "feature-extraction"
            if hf_task not in HF_TASKS:
                raise ValueError(
                    f"model.task: unknown task '{hf_task}' for modelquant's measurements; use "
                    f"{' or '.join(HF_TASKS)}"
                )
            if self.task is not None and self.task != HF_TASKS[hf_task]:
                raise ValueError(
                    f"task: {self.task} does not measure a {hf_task} model; remove task: (the "
                    f"model's task picks {HF_TASKS[hf_task]})"
                )
        for backend in self.gates.min_speedup:
            if backend in EMULATED_BACKENDS:
                raise ValueError(
                    f"gates.min_speedup.{backend}: {backend} latency is emulated on this machine "
                    "and says nothing about the device's speed; it is never gated on"
                )
            if backend not in self.evaluate.backends:
                raise ValueError(
                    f"gates.min_speedup names backend '{backend}', which evaluate.backends "
                    f"does not measure ({', '.join(self.evaluate.backends)})"
                )
        similarity = [k for k in GatesConfig.SIMILARITY_GATES if getattr(self.gates, k) is not None]
        if similarity and self.metric_task != "feature-extraction":
            raise ValueError(
                f"gates.{similarity[0]} measures embeddings; this recipe's task is "
                f"{self.metric_task} (use max_accuracy_drop)"
            )
        sb = self.gates.speedup_batch_size
        if sb is not None and sb not in self.evaluate.batch_sizes:
            raise ValueError(f"gates.speedup_batch_size {sb} is not in evaluate.batch_sizes")
        return self

    def stage_list(self) -> list[tuple[str, StageConfig]]:
        """The stages as (name, typed config) pairs, in order."""
        out = []
        for item in self.stages:
            model = typing.cast(BaseModel, item)
            (name,) = type(model).model_fields
            out.append((name, getattr(model, name)))
        return out


# ---------------------------------------------------------------- loading with line numbers


def _unknown(kind: str, value: str, valid: typing.Iterable[str], where: str = "") -> str:
    """ "unknown key 'x' at file:line; did you mean 'y'?" (or the valid choices)."""
    valid = list(valid)
    close = difflib.get_close_matches(value, valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f" (valid: {', '.join(valid)})"
    at = f" at {where}" if where else ""
    return f"unknown {kind} {value!r}{at}{hint}"


class RecipeSource:
    """The raw recipe mapping plus where each key sits in its file, for error messages."""

    def __init__(self, data: dict[str, Any], path: Path, lines: dict[tuple[Any, ...], int]):
        self.data = data
        self.path = path
        self.lines = lines

    def where(self, loc: tuple[Any, ...]) -> str:
        """`file:line` of the deepest part of `loc` that the file has."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return f"{self.path}:{line}"
        return str(self.path)


def _line_map(
    node: yaml.Node,
    path: tuple[Any, ...],
    out: dict[tuple[Any, ...], int],
    enclosing: frozenset[int] = frozenset(),
) -> None:
    if id(node) in enclosing:  # an alias inside its own anchor: the document has no end
        raise yaml.MarkedYAMLError(
            problem="this alias refers to a mapping or list that contains it; write the value "
            "out instead of the alias",
            problem_mark=node.start_mark,
        )
    inside = enclosing | {id(node)}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = (*path, key_node.value)
            out[key_path] = key_node.start_mark.line + 1
            _line_map(value_node, key_path, out, inside)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = item.start_mark.line + 1
            _line_map(item, (*path, i), out, inside)


def read_recipe_source(path: Path) -> RecipeSource:
    """Parse a recipe file's YAML (no validation yet), keeping key line numbers."""
    if not path.is_file():
        raise UserError(
            f"recipe file not found: {path} (give a file, or a name from `modelquant recipes list`)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not UTF-8 text (byte {exc.start}); a recipe is a YAML file"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read recipe file {path}: {exc.strerror or exc}") from None
    lines: dict[tuple[Any, ...], int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
        if node is not None:
            _line_map(node, (), lines)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"invalid YAML at {where}: {problem}") from None
    except RecursionError:
        raise UserError(f"{path}: the YAML is nested too deeply to be a recipe") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping (name, model, data, stages, ...)")
    return RecipeSource(data, path, lines)


def apply_overrides(source: RecipeSource, overrides: typing.Sequence[str]) -> None:
    """Apply `key.path=value` overrides in place; values are parsed as YAML (so 3 is an int)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key.path=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        parts: list[Any] = [int(p) if re.fullmatch("[0-9]+", p) else p for p in key.split(".")]
        target: Any = source.data
        for i, part in enumerate(parts[:-1]):
            where = ".".join(map(str, parts[: i + 1]))
            if isinstance(target, list):
                if not isinstance(part, int) or part >= len(target):
                    raise UserError(f"--set {key}: '{where}' is not an index of that list")
                target = target[part]
            elif isinstance(target, dict):
                if target.get(part) is None:
                    target[part] = {}
                target = target[part]
            else:
                raise UserError(f"--set {key}: '{where}' is a value, not a section")
        last = parts[-1]
        if isinstance(target, list):
            if not isinstance(last, int) or last >= len(target):
                raise UserError(f"--set {key}: '{last}' is not an index of that list")
        elif not isinstance(target, dict):
            raise UserError(f"--set {key}: the parent is a value, not a section")
        target[last] = value
        source.lines[tuple(parts)] = 0  # marks "from --set" in messages


def _annotation_fields(tp: Any) -> dict[str, Any] | None:
    """Field name -> annotation of a model type, seeing through Optional/Annotated."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _annotation_fields(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            found = _annotation_fields(arg)
            if found is not None:
                return found
        return None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {name: f.annotation for name, f in tp.model_fields.items()}
    return None


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the mapping at `loc` in a recipe (for 'did you mean')."""
    tp: Any = Recipe
    stages = registered_stages()
    i = 0
    while i < len(loc):
        part = loc[i]
        if tp is Recipe and part == "stages":
            if i + 1 >= len(loc):
                return []
            if i + 2 >= len(loc):
                return list(stages)
            stage = loc[i + 2]
            if stage not in stages:
                return []
            tp = stages[stage].Config
            i += 3
            continue
        fields = _annotation_fields(tp)
        if fields is None or part not in fields:
            # list items and dict values: step into the element type
            args = [a for a in typing.get_args(fields.get(part) if fields else tp) if a is not None]
            if isinstance(part, int) and args:
                tp = args[0]
                i += 1
                continue
            return []
        tp = fields[part]
        origin = typing.get_origin(tp)
        if origin in (list, dict) and i + 1 < len(loc):
            tp = typing.get_args(tp)[-1]
            i += 1
        i += 1
    fields = _annotation_fields(tp)
    return list(fields) if fields else []


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union tags: ('stages', 0, 'quantize', 'quantize', 'x') -> (.., 'x')."""
    out: list[Any] = []
    for i, part in enumerate(loc):
        if i >= 2 and out[:1] == ["stages"] and len(out) == 2 and part in registered_stages():
            if i + 1 < len(loc) and loc[i + 1] == part:
                continue
        out.append(part)
    return tuple(out)


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<recipe>"


def describe_validation_error(exc: ValidationError, source: RecipeSource) -> str:
    """One line for the first problem, naming file:line, the key, and the fix."""
    messages = []
    # A misspelled key also shows up as the real key "missing": name the misspelling first.
    order = {"extra_forbidden": 0, "union_tag_invalid": 0, "missing": 2}
    for err in sorted(exc.errors(), key=lambda e: order.get(e["type"], 1)):
        loc = _clean_loc(tuple(err["loc"]))
        where = source.where(loc)
        where = where.removesuffix(":0") + " (from --set)" if where.endswith(":0") else where
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1])
            msg = _unknown("key", key, _fields_at(loc[:-1]), where)
            parent = _dotted(loc[:-1])
            if parent != "<recipe>":
                msg += f" (in {parent})"
        elif kind == "union_tag_invalid":
            tag = err.get("ctx", {}).get("tag", "?")
            msg = _unknown("stage", str(tag), registered_stages(), where)
        elif kind == "union_tag_not_found":
            msg = f"each stage is a mapping with one key, the stage name, at {where}"
        elif kind == "missing":
            parent = f" (in {_dotted(loc[:-1])})" if len(loc) > 1 else ""
            msg = f"missing required key '{loc[-1]}' at {where}{parent}"
        else:
            text = err["msg"].removeprefix("Value error, ")
            msg = f"{_dotted(loc)}: {text} at {where}" if loc else f"{text} at {where}"
        messages.append(msg)
    more = f" (and {len(messages) - 1} more problem(s))" if len(messages) > 1 else ""
    return messages[0] + more


def load_recipe(path: Path, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe file; any problem is a one-line `UserError`."""
    source = read_recipe_source(path)
    apply_overrides(source, overrides)
    try:
        return Recipe.model_validate(source.data)
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc, source)) from None


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema of the recipe format (stages included, from the registry)."""
    return Recipe.model_json_schema()
