"""Served traffic as canonical outcome rows (:mod:`models.outcomes`), for training.

One row per answered request that has feedback (the latest feedback counts):
``dataset="served"``, ``task`` from the request (``thrifty.task``,
``metadata.task`` or ``x-thrifty-task``) or ``"served"``, ``prompt_id`` = the
decision id, ``model`` = the model that answered, ``success`` from feedback,
tokens and cost from the upstream's usage (``cost_source="observed"``), and the
optional columns ``decision_id``, ``propensity``, ``router_version`` and
``feedback_source``. ``include_unlabeled=True`` adds answered requests without
feedback (``success`` NaN). Decisions only routed (``/v1/route``) or failed are
never exported: no model answered them.
"""

from __future__ import annotations

import pandas as pd

from models.outcomes import OPTIONAL_COLUMNS, OUTCOME_COLUMNS
from models.store.base import OutcomeStore

DATASET = "served"
EXPORTED_OPTIONAL = ("propensity", "decision_id", "router_version", "feedback_source")


def outcome_frame(store: OutcomeStore, *, include_unlabeled: bool = False) -> pd.DataFrame:
    rows = store.joined(include_unlabeled=include_unlabeled)
    records = [
        {
            "dataset": DATASET,
            "task": r["task"] or DATASET,
            "prompt_id": r["decision_id"],
            "prompt": r["prompt"] or "",
            "model": r["answered_model"],
            "success": r["fb_success"],
            "score_raw": r["fb_score_raw"],
            "input_tokens": r["input_tokens"] or 0,
            "output_tokens": r["output_tokens"] or 0,
            "cost_usd": r["cost_usd"] or 0.0,
            "cost_source": "observed",
            "answer": None,
            "response": r["response"],
            "latency_s": r["latency_s"],
            "propensity": r["propensity"],
            "decision_id": r["decision_id"],
            "router_version": r["router_version"],
            "feedback_source": r["fb_source"],
        }
        for r in rows
    ]
    dtypes = {**OUTCOME_COLUMNS, **{c: OPTIONAL_COLUMNS[c] for c in EXPORTED_OPTIONAL}}
    frame = pd.DataFrame.from_records(records, columns=list(dtypes))
    return frame.astype(dtypes)
