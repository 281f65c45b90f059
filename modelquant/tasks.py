"""What a recipe's task means for measurement: how a batch's raw output becomes what is compared
(logits, or pooled sentence embeddings), the headline metric, and what else the report shows.

classification: top-1 accuracy against the labels (agreement with the baseline besides).
feature-extraction: mean cosine similarity of each sentence embedding (mean pooling over the
attention mask, then normalized, as all-MiniLM-L6-v2's model card says) to the FP32 model's; its
5th percentile and minimum, and nearest-neighbour agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelquant import metrics
from modelquant.errors import UserError

if TYPE_CHECKING:
    from modelquant.data import Batch

HF_TASKS = {"feature-extraction": "feature-extraction", "text-classification": "classification"}
"""Exporter task of an hf model -> the recipe task that measures it."""


@dataclass(frozen=True)
class Task:
    name: str
    metric: metrics.Metric
    needs_labels: bool
    needs_reference: bool
    """The metric compares with the baseline's outputs (embeddings have no labels)."""

    def reduce(self, batch: Batch, output: np.ndarray) -> np.ndarray:
        """What is compared, from one batch's first output (rows match the batch's)."""
        if self.name != "feature-extraction":
            return output
        if output.ndim == 3:  # token embeddings: pool over the tokens the mask keeps
            mask = batch.get("attention_mask")
            if mask is None:
                mask = np.ones(output.shape[:2], dtype=np.int64)
            output = metrics.mean_pool(output, mask[:, : output.shape[1]])
        return metrics.normalize(output.astype(np.float32))

    def score(
        self, outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None
    ) -> float:
        """The headline metric of `outputs` (reduced); `reference`: the baseline's, same rows."""
        if self.name == "feature-extraction":
            if reference is None:
                raise ValueError("cosine similarity needs the reference model's embeddings")
            return metrics.cosine_stats(outputs, reference[: len(outputs)]).mean
        if labels is None:
            raise UserError("evaluation data has no labels; classification accuracy needs them")
        return metrics.top1(outputs, labels[: len(outputs)])

    def agreement(self, outputs: np.ndarray, reference: np.ndarray) -> float:
        """Share of samples where the model answers as the baseline does: the same top-1 class,
        or (embeddings) the same nearest neighbour among the evaluation samples."""
        if self.name == "feature-extraction":
            return metrics.neighbour_agreement(outputs, reference[: len(outputs)])
        return metrics.agreement(outputs, reference[: len(outputs)])

    def similarity(self, outputs: np.ndarray, reference: np.ndarray) -> dict[str, Any] | None:
        """Cosine mean / p5 / min and neighbour agreement (feature extraction), else None."""
        if self.name != "feature-extraction":
            return None
        stats = metrics.cosine_stats(outputs, reference[: len(outputs)])
        return {
            "cosine_mean": stats.mean,
            "cosine_p5": stats.p5,
            "cosine_min": stats.min,
            "neighbour_agreement": self.agreement(outputs, reference),
            "samples": len(outputs),
        }


CLASSIFICATION = Task("classification", metrics.TOP1, needs_labels=True, needs_reference=False)
FEATURE_EXTRACTION = Task(
    "feature-extraction", metrics.COSINE, needs_labels=False, needs_reference=True
)
_BY_NAME = {t.name: t for t in (CLASSIFICATION, FEATURE_EXTRACTION)}


def get_task(name: str) -> Task:
    return _BY_NAME[name]
