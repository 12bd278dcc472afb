"""Callbacks and loggers for cross-cutting behaviour."""

from callbacks.checkpoint import RunCheckpoint, StepSnapshots
from callbacks.cluster_eval import ClusterEvaluation
from callbacks.condensed_images import CondensedImages
from callbacks.confusion import ConfusionMatrixPlot
from callbacks.loggers import WandbLogger
from callbacks.nan_guard import NaNGuard
from callbacks.rank_monitor import EmbeddingRankMonitor
from callbacks.segmentation_vis import ColourPredictionWriter, SegmentationOverlays

__all__ = [
    "ClusterEvaluation",
    "ColourPredictionWriter",
    "CondensedImages",
    "ConfusionMatrixPlot",
    "EmbeddingRankMonitor",
    "NaNGuard",
    "RunCheckpoint",
    "SegmentationOverlays",
    "StepSnapshots",
    "WandbLogger",
]
