"""Callbacks and loggers for cross-cutting behaviour."""

from callbacks.loggers import WandbLogger
from callbacks.rank_monitor import EmbeddingRankMonitor

__all__ = ["EmbeddingRankMonitor", "WandbLogger"]
