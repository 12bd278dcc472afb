"""Callbacks and loggers for cross-cutting behaviour."""

from callbacks.loggers import WandbLogger
from callbacks.rank_monitor import EmbeddingRankMonitor
from callbacks.segmentation_vis import ColourPredictionWriter, SegmentationOverlays

__all__ = [
    "ColourPredictionWriter",
    "EmbeddingRankMonitor",
    "SegmentationOverlays",
    "WandbLogger",
]
