"""Evaluators shared by every pretraining method: online linear probe and kNN."""

from contraseg.lightning_modules.evaluators.knn import WeightedKNN, weighted_knn_predict
from contraseg.lightning_modules.evaluators.linear_probe import OnlineLinearProbe

__all__ = ["OnlineLinearProbe", "WeightedKNN", "weighted_knn_predict"]
