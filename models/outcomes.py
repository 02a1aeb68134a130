"""The canonical outcome-log schema: one row per (prompt, model) call.

Shared by training (which reads it) and serving (whose store exports it), so
served traffic and benchmark logs meet in one format — the long format of
``shared/data/outcomes/*.parquet`` documented in ``shared/data/README.md``.
"""

from __future__ import annotations

# column -> pandas dtype of the canonical frame
OUTCOME_COLUMNS: dict[str, str] = {
    "dataset": "string",
    "task": "string",
    "prompt_id": "string",
    "prompt": "string",
    "model": "string",
    "success": "float64",
    "score_raw": "float64",
    "input_tokens": "int64",
    "output_tokens": "int64",
    "cost_usd": "float64",
    "cost_source": "string",
    "answer": "string",
    "response": "string",
    "latency_s": "float64",
}

# Optional columns a reader keeps when present.
#   split:        train/test split of the source (routerbench-subset)
#   propensity:   probability with which the logging policy chose this model (served traffic)
#   decision_id:  the serving decision the row came from
#   router_version: the router that made the decision
#   feedback_source: who judged success (user, test, judge, ...)
#   ts:           when the request was served (epoch seconds)
#   chosen_model: the model the decision chose (``model`` is the one that answered)
#   attempts:     upstream calls made for the request (retries and fail-overs included)
#   failover:     answered by another model than the first one called (1.0) or not (0.0)
#   decision_latency_s, novelty: time to decide; how unlike the router's training prompts (where recorded)
#   candidates:   the decision's candidates with their predictions (JSON), for counterfactuals
OPTIONAL_COLUMNS: dict[str, str] = {
    "split": "string",
    "propensity": "float64",
    "decision_id": "string",
    "router_version": "string",
    "feedback_source": "string",
    "ts": "float64",
    "chosen_model": "string",
    "attempts": "float64",
    "failover": "float64",
    "decision_latency_s": "float64",
    "novelty": "float64",
    "candidates": "string",
}

REQUIRED_COLUMNS = ("prompt_id", "prompt", "model", "success")
