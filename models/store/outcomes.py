"""Served traffic as canonical outcome rows (:mod:`models.outcomes`), for training.

One row per answered request that has feedback (the latest feedback counts):
``dataset="served"``, ``task`` from the request (``thrifty.task``,
``metadata.task`` or ``x-thrifty-task``) or ``"served"``, ``prompt_id`` = the
decision id, ``model`` = the model that answered, ``success`` from feedback,
tokens and cost from the upstream's usage (``cost_source="observed"``), and the
optional columns ``decision_id``, ``propensity``, ``router_version`` and
``feedback_source``, and what the savings report needs (``serving.report``):
``ts``, ``chosen_model``, ``attempts``, ``failover``, ``candidates`` (and
``decision_latency_s`` / ``novelty`` where the store records them).
``include_unlabeled=True`` adds answered requests without
feedback (``success`` NaN). Decisions only routed (``/v1/route``) or failed are
never exported: no model answered them.
"""

from __future__ import annotations

import pandas as pd

from models.outcomes import OPTIONAL_COLUMNS, OUTCOME_COLUMNS
from models.store.base import OutcomeStore
from models.store.records import CASCADE_POLICY

DATASET = "served"
EXPORTED_OPTIONAL = ("propensity", "decision_id", "router_version", "feedback_source", "ts", "chosen_model", "attempts",
                     "failover", "decision_latency_s", "novelty", "candidates")


def attempt_summary(store: OutcomeStore, since: float | None = None) -> dict[str, tuple[int, str | None]]:
    """Decision id -> (upstream calls made, the first model called); attempts are never older than their decision."""
    out: dict[str, tuple[int, str | None]] = {}
    for row in sorted(store.attempts(since=since), key=lambda r: (r["decision_id"], r["n"])):
        calls, first = out.get(row["decision_id"], (0, None))
        if row["status"] != "skipped":
            calls, first = calls + 1, first or row["model"]
        out[row["decision_id"]] = (calls, first)
    return out


def _served_columns(row: dict, attempts: dict[str, tuple[int, str | None]]) -> dict:
    calls, first = attempts.get(row["decision_id"], (0, None))
    return {
        "ts": row["ts"],
        "chosen_model": row["chosen_model"],
        "attempts": float(calls) if calls else None,
        "failover": None if first is None else float(first != row["answered_model"]),
        "decision_latency_s": row.get("decision_latency_s"),
        "novelty": row.get("novelty"),
        "candidates": row["candidates"],
    }


def outcome_frame(store: OutcomeStore, *, include_unlabeled: bool = False, since: float | None = None,
                  until: float | None = None, cascades: bool = True) -> pd.DataFrame:
    """The canonical rows of ``store`` (decisions with ``since <= ts < until`` when given).

    ``cascades=False`` leaves out decisions of cascade profiles (for training: their answering model
    was picked by the answers themselves, so its success is not a fair label of that model on the
    prompt); ``frame.attrs["cascades_left_out"]`` counts them.
    """
    rows = store.joined(include_unlabeled=include_unlabeled, since=since, until=until)
    kept = rows if cascades else [r for r in rows if r.get("policy") != CASCADE_POLICY]
    attempts = attempt_summary(store, since)
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
            **_served_columns(r, attempts),
        }
        for r in kept
    ]
    dtypes = {**OUTCOME_COLUMNS, **{c: OPTIONAL_COLUMNS[c] for c in EXPORTED_OPTIONAL}}
    frame = pd.DataFrame.from_records(records, columns=list(dtypes)).astype(dtypes)
    frame.attrs["cascades_left_out"] = len(rows) - len(kept)
    return frame
