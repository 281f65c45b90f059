"""The report contract of DESIGN.md as pydantic models; report.json is `Report.model_dump_json`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelquant.latency_profile import LatencyProfile


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatencyStats(_Model):
    p50: float = Field(description="Median milliseconds per run.")
    p90: float
    mean: float
    runs: int
    ci95: tuple[float, float] = Field(
        description="95 % interval of the median (ms), bootstrapped over whole blocks of runs."
    )
    threads: int | None = Field(
        None, description="Intra-op threads the session ran with (None: not known)."
    )
    threads_source: str = Field(
        "", description="Where `threads` comes from: set by the user, or onnxruntime's default."
    )
    blocks: int | None = Field(None, description="Blocks the runs were timed in.")
    cold_p50: float | None = Field(
        None,
        description="Median ms of each block's first run (after the other model ran); not used.",
    )


class BackendResult(_Model):
    accuracy: float | None = None
    latency_ms: dict[str, LatencyStats] = Field(default_factory=dict)
    """Batch size (as a string) -> latency."""
    emulated: bool = False
    execution_provider: str | None = None
    skipped: str | None = None
    notes: list[str] = Field(default_factory=list)
    untimed: dict[str, str] = Field(
        default_factory=dict, description="Batch size (as a string) -> why it was not timed."
    )
    samples: int | None = Field(None, description="Evaluation samples the accuracy is over.")
    model: str | None = Field(
        None, description="The file that ran here when it is a backend variant of the model."
    )
    parity: dict[str, Any] | None = Field(
        None,
        description="Same file on this backend vs the CPU EP: max_abs_diff, beyond_one_step, "
        "top1_agreement, ...",
    )


class ModelResult(_Model):
    path: str
    metric: str = Field(description="top1 (accuracy) or cosine (mean cosine to the baseline).")
    accuracy: float = Field(description="The metric's value on the CPU (the reference backend).")
    size_bytes: int
    gzip_bytes: int
    params: int
    nonzero_params: int
    backends: dict[str, BackendResult] = Field(default_factory=dict)
    agreement: float | None = Field(
        None,
        description="Share of samples whose top-1 class (embeddings: nearest neighbour among the "
        "evaluation samples) matches the baseline's (cpu).",
    )
    similarity: dict[str, Any] | None = Field(
        None,
        description="Feature extraction: cosine of each sample's embedding to the baseline's "
        "(cosine_mean, cosine_p5, cosine_min), neighbour_agreement and samples (cpu).",
    )


class Speedup(_Model):
    value: float
    ci95: tuple[float, float]


class Deltas(_Model):
    accuracy_pt: float = Field(description="Compressed minus baseline accuracy, in points.")
    size_ratio: float
    gzip_ratio: float
    params_ratio: float
    speedup: dict[str, dict[str, Speedup]] = Field(default_factory=dict)
    """Backend -> batch size -> baseline p50 / compressed p50 (with interval)."""


class Gate(_Model):
    name: str
    threshold: float
    value: float | None
    passed: bool
    detail: str = ""
    unit: Literal["fraction", "ratio", "speedup", "cosine", "share", ""] = Field(
        "",
        description="What threshold and value measure: fraction (accuracy, shown in points), "
        "ratio (size), speedup (times faster), cosine (similarity to the baseline's "
        "embeddings), share (of samples, e.g. the same nearest neighbour).",
    )


class StepQuality(_Model):
    """The model as one stage left it, scored on the evaluation data against the baseline: what
    that step cost, before the next one."""

    metric: str = Field(description="top1 (accuracy on the labels) or cosine (to the baseline).")
    value: float = Field(description="The metric's value.")
    agreement: float = Field(
        description="Share of samples with the baseline's top-1 class (embeddings: the same "
        "nearest neighbour among the evaluation samples)."
    )
    cosine_p5: float | None = Field(None, description="Embeddings: 5th percentile of the cosine.")
    cosine_min: float | None = Field(None, description="Embeddings: the lowest cosine.")
    params: int = Field(description="Parameters of the model at that point.")
    runtime: str = Field(description="What ran it: torch (a torch stage) or onnxruntime cpu.")


class StageEntry(_Model):
    name: str
    settings: dict[str, Any]
    seconds: float
    cached: bool = False
    details: dict[str, Any] = Field(default_factory=dict)
    quality: StepQuality | None = Field(
        None,
        description="The model after this stage on the evaluation data (the accuracy cost of "
        "each step); the last stage's equals the compressed model's CPU figures.",
    )


class BackendStatus(_Model):
    available: bool
    reason: str = ""
    execution_provider: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)


class DataParallelInfo(_Model):
    """How the torch stages trained under torchrun."""

    world_size: int = Field(description="Processes (ranks) that trained together.")
    backend: str = Field(description="torch.distributed backend (gloo on CPUs).")
    strategy: str = Field(description="ddp (replicated) or fsdp (sharded).")
    gradient_compression: str = Field(description="How gradients were exchanged.")
    per_rank_batch_size: list[int] = Field(
        default_factory=list,
        description="Training batch per rank, for each distinct size the stages used (the "
        "recipe's batch_size is the global batch, split across the ranks).",
    )


class Environment(_Model):
    python: str
    platform: str
    torch: str | None
    onnx: str
    onnxruntime: str
    cpu: str
    cpu_flags: list[str]
    cores: int
    backends: dict[str, BackendStatus] = Field(default_factory=dict)
    distributed: DataParallelInfo | None = Field(
        None, description="Data-parallel training under torchrun (None: one process)."
    )


class Report(_Model):
    modelquant_version: str
    status: Literal["passed", "gate_failed"]
    created: str
    recipe: dict[str, Any]
    environment: Environment
    stages: list[StageEntry]
    baseline: ModelResult
    compressed: ModelResult
    variants: dict[str, ModelResult] = Field(default_factory=dict)
    deltas: Deltas
    gates: list[Gate]
    artifacts: dict[str, str]
    warnings: list[str] = Field(
        default_factory=list,
        description="Lines the run passed with but the user should read (e.g. the compressed "
        "model is slower than the baseline on the CPU at every batch size).",
    )
    latency_profile: LatencyProfile | None = Field(
        None,
        description="Baseline and compressed profiled per op on the CPU, with the known causes "
        "and the advice line; present when the compressed model was slower at a batch size.",
    )
