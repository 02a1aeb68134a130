"""``thrifty logs export``: served outcomes (:func:`models.store.outcomes.outcome_frame`) written to a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from models.store import OutcomeStore
from models.store.outcomes import outcome_frame

FORMATS = (".parquet", ".jsonl", ".csv")


def check_format(out: str | Path) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"unsupported output format {Path(out).suffix!r}; use one of {', '.join(FORMATS)}")
    return suffix


def write_frame(frame: pd.DataFrame, out: str | Path) -> Path:
    """Write ``frame`` by the extension of ``out``, atomically (a temp file renamed into place)."""
    out = Path(out)
    suffix = check_format(out)
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


def export_outcomes(store: OutcomeStore, out: str | Path, *, include_unlabeled: bool = False) -> pd.DataFrame:
    check_format(out)
    frame = outcome_frame(store, include_unlabeled=include_unlabeled)
    write_frame(frame, out)
    return frame
