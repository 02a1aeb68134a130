"""Routing: features of a prompt, per-model predictions, and the policy that picks a model.

Depends on ``models`` only. Fitted by ``training``; loaded by ``serving``.
"""

from router.decision import Candidate, Decision
from router.features import TextFeaturizer
from router.policy import Threshold, Tradeoff, make_policy
from router.predictors import KNNSuccess, LightGBMSuccess, LogisticSuccess, TokenRegressor
from router.router import Router, RoutingError, Scores

__all__ = [
    "Candidate",
    "Decision",
    "KNNSuccess",
    "LightGBMSuccess",
    "LogisticSuccess",
    "Router",
    "RoutingError",
    "Scores",
    "TextFeaturizer",
    "Threshold",
    "TokenRegressor",
    "Tradeoff",
    "make_policy",
]
