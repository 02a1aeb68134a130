"""Served traffic as canonical outcome rows (``models.outcomes``), for ``thrifty train``.

One row per answered request that has feedback (the latest feedback counts):
``dataset="served"``, ``task`` from the request (``thrifty.task``,
``metadata.task`` or ``x-thrifty-task``) or ``"served"``, ``prompt_id`` = the
decision id, ``model`` = the model that answered, ``success`` from feedback,
tokens and cost from the upstream's usage (``cost_source="observed"``), and the
optional columns ``decision_id``, ``propensity``, ``router_version`` and
``feedback_source``, and what the savings report needs (:mod:`serving.report`):
``ts``, ``chosen_model``, ``attempts``, ``failover``, ``candidates`` (and
``decision_latency_s`` / ``novelty`` where the store records them).
``include_unlabeled=True`` adds answered requests without
feedback (``success`` NaN). Decisions only routed (``/v1/route``) or failed are
never exported: no model answered them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from models.outcomes import OPTIONAL_COLUMNS, OUTCOME_COLUMNS
from serving.store import connect, read_joined

DATASET = "served"
FORMATS = (".parquet", ".jsonl", ".csv")
EXPORTED_OPTIONAL = ("propensity", "decision_id", "router_version", "feedback_source", "ts", "chosen_model", "attempts",
                     "failover", "decision_latency_s", "novelty", "candidates")


def attempt_summary(store_path: str | Path) -> dict[str, tuple[int, str | None]]:
    """Decision id -> (upstream calls made, the first model called)."""
    conn = connect(Path(store_path).expanduser())
    try:
        rows = conn.execute("SELECT decision_id, model, status FROM attempts ORDER BY decision_id, n").fetchall()
    finally:
        conn.close()
    out: dict[str, tuple[int, str | None]] = {}
    for decision_id, model, status in rows:
        calls, first = out.get(decision_id, (0, None))
        if status != "skipped":
            calls, first = calls + 1, first or model
        out[decision_id] = (calls, first)
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


def outcome_frame(store_path: str | Path, *, include_unlabeled: bool = False) -> pd.DataFrame:
    rows = read_joined(store_path, include_unlabeled=include_unlabeled)
    attempts = attempt_summary(store_path)
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
        for r in rows
    ]
    dtypes = {**OUTCOME_COLUMNS, **{c: OPTIONAL_COLUMNS[c] for c in EXPORTED_OPTIONAL}}
    frame = pd.DataFrame.from_records(records, columns=list(dtypes))
    return frame.astype(dtypes)


def write_frame(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write ``frame`` by the extension of ``out``, atomically (a temp file renamed into place)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"unsupported output format {out.suffix!r}; use one of {', '.join(FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        elif suffix == ".jsonl":
            frame.to_json(tmp, orient="records", lines=True)
        else:
            frame.to_csv(tmp, index=False)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def export_outcomes(store_path: str | Path, out: str | Path, *, include_unlabeled: bool = False) -> pd.DataFrame:
    frame = outcome_frame(store_path, include_unlabeled=include_unlabeled)
    write_frame(frame, out)
    return frame
