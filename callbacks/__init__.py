"""Callbacks and loggers for cross-cutting behaviour."""

from contraseg.callbacks.checkpoint import RunCheckpoint, StepSnapshots
from contraseg.callbacks.cluster_eval import ClusterEvaluation
from contraseg.callbacks.condensed_images import CondensedImages
from contraseg.callbacks.confusion import ConfusionMatrixPlot
from contraseg.callbacks.loggers import WandbLogger
from contraseg.callbacks.nan_guard import NaNGuard
from contraseg.callbacks.rank_monitor import EmbeddingRankMonitor
from contraseg.callbacks.run_figures import RunFigures
from contraseg.callbacks.segmentation_vis import ColourPredictionWriter, SegmentationOverlays

__all__ = [
    "ClusterEvaluation",
    "ColourPredictionWriter",
    "CondensedImages",
    "ConfusionMatrixPlot",
    "EmbeddingRankMonitor",
    "NaNGuard",
    "RunCheckpoint",
    "RunFigures",
    "SegmentationOverlays",
    "StepSnapshots",
    "WandbLogger",
]
