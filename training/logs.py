"""Outcome-log ingestion: files of (prompt, model) outcomes in, one canonical frame out.

Reads the canonical long format of ``models/outcomes.py`` (the format of
``shared/data/outcomes/*.parquet``) from Parquet, JSON Lines and CSV, and
RouterBench's own wide layout (one row per prompt, three columns per model)
from CSV, pickle and Parquet. Columns a file lacks are filled the way the
shared data was built: token counts with the offline o200k tokenizer, costs
from a :class:`PriceTable`.

Every problem is a :class:`LogError` naming the file, the 1-based data row
and the column, found with vectorised pandas/numpy operations so that a
350k-row log is checked in about a second. Reading writes nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from models.outcomes import OPTIONAL_COLUMNS, OUTCOME_COLUMNS, REQUIRED_COLUMNS
from models.prices import PriceTable
from models.tokens import count_tokens
from training.sources import LogPart, SourceError, log_parts, read_part

# Internal bookkeeping columns, dropped before a frame is returned: where each
# row came from, so that checks run after concatenation can still name it.
ROW = "_row"  # 1-based data row of the source file (wide files: the prompt's row)
SOURCE = "_source"  # the file (or frame name) the row came from

ALL_COLUMNS: dict[str, str] = {**OUTCOME_COLUMNS, **OPTIONAL_COLUMNS}
STRING_COLUMNS = [c for c, dtype in ALL_COLUMNS.items() if dtype == "string"]
OUTCOME_KEY = ["dataset", "prompt_id", "model"]

# RouterBench's wide layout: per model `<model>`, `<model>|model_response`, `<model>|total_cost`
WIDE_COST_SUFFIX = "|total_cost"
WIDE_RESPONSE_SUFFIX = "|model_response"
WIDE_ID_COLUMNS = ("sample_id", "prompt", "eval_name")


class LogError(ValueError):
    """An outcome log cannot be used; ``str()`` names file, row and column.

    ``row`` is the 1-based data row of the file (header not counted), or None
    when the problem is the file as a whole; ``column`` is None when no single
    column is at fault.
    """

    def __init__(self, path: str | Path, message: str, *, row: int | None = None, column: str | None = None):
        self.path = str(path)
        self.message = message
        self.row = row
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [f"row {self.row}"] if self.row is not None else []
        if self.column is not None:
            where.append(f"column {self.column!r}")
        location = f"{self.path}: {', '.join(where)}" if where else self.path
        return f"{location}: {self.message}"

    def __reduce__(self):  # keep row/column when pickled (e.g. across processes)
        return (_rebuild_log_error, (self.path, self.message, self.row, self.column))


def _rebuild_log_error(path, message, row, column) -> LogError:
    return LogError(path, message, row=row, column=column)


# --------------------------------------------------------------------------- public API


def read_logs(
    paths: Sequence[str | Path], prices: PriceTable | None = None, *, progress: bool = False
) -> pd.DataFrame:
    """Read and validate outcome logs, concatenated into one canonical frame.

    ``prices`` is needed only when some rows carry no ``cost_usd``; those rows
    are priced from their token counts. Rows that repeat a (dataset,
    prompt_id, model) of the same file with the same success are dropped;
    conflicting repeats, and any repeat across two files, are errors.
    """
    parts = log_sources(paths)
    from training.progress import bar

    with bar(parts, enabled=progress, desc="reading logs", unit="file") as files:
        frames = [read_part_rows(part, prices) for part in files]
    return combine_part_rows(frames)


def read_part_rows(part: LogPart, prices: PriceTable | None = None) -> pd.DataFrame:
    """One file's rows, checked, with token counts and costs filled: the per-file half of :func:`read_logs`.

    The rows keep the bookkeeping columns that :func:`combine_part_rows` needs
    to name files and rows; a distributed reader runs this on its workers.
    """
    rows = _normalised_file(part)
    _fill_token_counts(rows)
    _fill_costs(rows, prices)
    return rows


def combine_part_rows(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The across-files half of :func:`read_logs`: prompt texts agree, no repeated outcomes; the canonical frame.

    A ``prompt`` column may be categorical (one copy of each text, as a
    distributed reader ships it); it stays categorical.
    """
    rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    _check_prompt_texts(rows)
    return _canonical(_without_repeated_outcomes(rows))


def log_sources(paths: Sequence[str | Path]) -> list[LogPart]:
    """The files behind ``paths``: files, directories of Parquet parts, fsspec URLs (see ``training.sources``)."""
    if isinstance(paths, (str, Path)):  # a lone path is a common slip; treat it as one file
        paths = [paths]
    if not paths:
        raise ValueError("read_logs: no files given")
    try:
        return log_parts([str(p) for p in paths], list(READERS))
    except SourceError as exc:
        raise LogError(exc.source, exc.message) from None


def read_log_file(path: str | Path, prices: PriceTable | None = None) -> pd.DataFrame:
    """Read one outcome log (long or RouterBench wide format; a file, a directory of parts or a URL); see :func:`read_logs`."""
    return read_logs([path], prices)


def routerbench_wide_to_long(frame: pd.DataFrame, source: str, dataset: str = "routerbench") -> pd.DataFrame:
    """Convert a frame in RouterBench's wide layout to the canonical long format.

    One row per (prompt, model) that has a label: a model whose success cell
    is empty was not evaluated on that prompt and gets no row. ``source`` is
    the name errors are reported under.
    """
    rows = _wide_to_long(frame, source, dataset)
    _fill_token_counts(rows)
    _fill_costs(rows, None)
    return combine_part_rows([rows])


# --------------------------------------------------------------------------- reading files


def _read_parquet(source) -> pd.DataFrame:
    return pd.read_parquet(source)


def _read_jsonl(source) -> pd.DataFrame:
    # dtype=False: an id like "007" must stay a string, not become the number 7
    return pd.read_json(source, lines=True, dtype=False)


def _read_csv(source) -> pd.DataFrame:
    text_columns = STRING_COLUMNS + list(WIDE_ID_COLUMNS)
    # Only an empty field is missing: answers such as "NA" or "None" are text.
    return pd.read_csv(source, dtype={c: "string" for c in text_columns}, keep_default_na=False, na_values=[""])


def _read_pickle(source) -> pd.DataFrame:
    # Unpickling runs code from the file: only for files the user chose to trust
    # (RouterBench publishes its data as a pickled DataFrame).
    return pd.read_pickle(source)


READERS: dict[str, tuple[str, Callable[..., pd.DataFrame]]] = {
    ".parquet": ("Parquet", _read_parquet),
    ".jsonl": ("JSON Lines", _read_jsonl),
    ".ndjson": ("JSON Lines", _read_jsonl),
    ".csv": ("CSV", _read_csv),
    ".pkl": ("a pickled DataFrame", _read_pickle),
    ".pickle": ("a pickled DataFrame", _read_pickle),
}


def _read_table(part: LogPart) -> pd.DataFrame:
    kind, reader = READERS[part.suffix]
    try:
        frame = read_part(part, reader)
    except Exception as exc:  # readers raise many types: ArrowInvalid, ParserError, UnpicklingError, ...
        raise LogError(part.name, f"cannot read the file as {kind}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(frame, pd.DataFrame):
        raise LogError(part.name, f"holds a {type(frame).__name__}, not a pandas DataFrame")
    return frame


def _is_wide(frame: pd.DataFrame) -> bool:
    return any(str(c).endswith(WIDE_COST_SUFFIX) for c in frame.columns)


def _normalised_file(part: LogPart) -> pd.DataFrame:
    frame = _read_table(part)
    if _is_wide(frame):
        return _wide_to_long(frame, part.name, "routerbench")
    return _long_rows(frame, part.name, default_dataset=part.dataset)


# --------------------------------------------------------------------------- long format


def _long_rows(frame: pd.DataFrame, source: str, default_dataset: str) -> pd.DataFrame:
    """The known columns of a long-format frame, checked row by row, with defaults filled."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns)) or "none"
        raise LogError(source, f"missing required column (columns found: {found})", column=missing[0])
    rows = frame[[c for c in ALL_COLUMNS if c in frame.columns]].reset_index(drop=True)
    rows = rows.assign(**{ROW: np.arange(1, len(rows) + 1), SOURCE: source})
    for column in STRING_COLUMNS:
        if column in rows:
            rows[column] = _as_string(rows[column])
    rows["dataset"] = _filled(rows.get("dataset"), default_dataset, len(rows))
    rows["task"] = _filled(rows.get("task"), rows["dataset"], len(rows))
    _check_values(rows, source)
    return rows


def _filled(column: pd.Series | None, default, length: int) -> pd.Series:
    """``column`` with missing or blank entries replaced by ``default`` (a scalar or a series)."""
    if column is None:
        column = pd.Series(pd.NA, index=range(length), dtype="string")
    blank = column.isna() | (column.str.strip() == "")
    return column.mask(blank, default).astype("string")


def _as_string(column: pd.Series) -> pd.Series:
    """Text of a column that a reader may have parsed as numbers (ids like 17 or 17.0)."""
    if pd.api.types.is_float_dtype(column):
        values = column.dropna()
        if (np.isfinite(values) & (values == np.floor(values))).all():
            return column.astype("Int64").astype("string")
    return column.astype("string")


def _check_values(rows: pd.DataFrame, source: str) -> None:
    """Check every per-row rule; numeric columns are replaced by their float values."""
    row_numbers = rows[ROW].to_numpy()
    for column in ("prompt_id", "model", "prompt"):
        _check_not_empty(rows[column], row_numbers, source, column)
    rows["success"] = _numbers(rows["success"], row_numbers, source, "success", low=0.0, high=1.0, required=True)
    for column in ("input_tokens", "output_tokens"):
        if column in rows:
            rows[column] = _token_counts(rows[column], row_numbers, source, column)
    bounds = {"cost_usd": (0.0, None), "latency_s": (0.0, None), "propensity": (0.0, 1.0), "score_raw": (None, None)}
    for column, (low, high) in bounds.items():
        if column in rows:
            rows[column] = _numbers(rows[column], row_numbers, source, column, low=low, high=high)


def _first(mask) -> int | None:
    """Position of the first True, or None: the vectorised way to find the first bad row."""
    hits = np.flatnonzero(np.asarray(mask, dtype=bool))
    return int(hits[0]) if hits.size else None


def _show(value) -> str:
    """A cell as the user wrote it: text quoted, a whole float without its '.0'."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# Each check gets a column's cells, the source row number of each cell, and the
# column name to report (a wide file's cells are named by the file's own column).


def _check_not_empty(cells: pd.Series, row_numbers: np.ndarray, source: str, column: str) -> None:
    blank = (cells.isna() | (cells.str.strip() == "")).to_numpy(dtype=bool, na_value=True)
    if (bad := _first(blank)) is not None:
        raise LogError(source, f"empty {column}", row=int(row_numbers[bad]), column=column)


def _numbers(
    cells: pd.Series,
    row_numbers: np.ndarray,
    source: str,
    column: str,
    *,
    low: float | None = None,
    high: float | None = None,
    required: bool = False,
) -> np.ndarray:
    """Float values of ``cells`` (NaN where empty); errors for text, NaN if required, values outside [low, high]."""
    cells = cells.reset_index(drop=True)
    values = pd.to_numeric(cells, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)

    def fail(position: int, problem: str):
        raise LogError(source, f"{_show(cells.iat[position])} {problem}", row=int(row_numbers[position]), column=column)

    if (bad := _first(~cells.isna().to_numpy() & np.isnan(values))) is not None:
        fail(bad, "is not a number")
    if required and (bad := _first(np.isnan(values))) is not None:
        raise LogError(source, "missing value (NaN); every row needs one", row=int(row_numbers[bad]), column=column)
    with np.errstate(invalid="ignore"):
        too_low = values < low if low is not None else np.zeros(len(values), dtype=bool)
        too_high = values > high if high is not None else np.zeros(len(values), dtype=bool)
    if (bad := _first(too_low | too_high | np.isinf(values))) is not None:
        if low is not None and high is not None:
            fail(bad, f"is outside [{low:g}, {high:g}]")
        fail(bad, "is negative" if too_low[bad] else "is not finite")
    return values


def _token_counts(cells: pd.Series, row_numbers: np.ndarray, source: str, column: str) -> np.ndarray:
    """Token counts as floats (NaN = to be counted): non-negative whole numbers."""
    values = _numbers(cells, row_numbers, source, column, low=0.0)
    if (bad := _first(~np.isnan(values) & (values != np.floor(values)))) is not None:
        shown = _show(cells.reset_index(drop=True).iat[bad])
        raise LogError(source, f"{shown} is not a whole number", row=int(row_numbers[bad]), column=column)
    return values


# --------------------------------------------------------------------------- RouterBench wide format


def _wide_to_long(frame: pd.DataFrame, source: str, dataset: str) -> pd.DataFrame:
    """Long rows (with ROW/SOURCE) from RouterBench's wide layout."""
    models = [str(c)[: -len(WIDE_COST_SUFFIX)] for c in frame.columns if str(c).endswith(WIDE_COST_SUFFIX)]
    missing = [c for c in (*WIDE_ID_COLUMNS, *models) if c not in frame.columns]
    if missing:
        raise LogError(source, "missing column of RouterBench's wide format", column=missing[0])
    frame = frame.reset_index(drop=True)
    row_numbers = np.arange(1, len(frame) + 1)
    for column in ("sample_id", "eval_name"):
        _check_not_empty(_as_string(frame[column]), row_numbers, source, column)
    parts = _parsed_texts(frame["prompt"])
    wide = pd.DataFrame(
        {
            ROW: row_numbers,
            "_sample_id": _as_string(frame["sample_id"]),
            "_task": _as_string(frame["eval_name"]),
            "_prompt": pd.array(["\n".join(p) if p is not None else None for p in parts], dtype="string"),
            # the prompt with repeated parts removed: how RouterBench's double copies are recognised
            "_canonical": ["\n".join(dict.fromkeys(p)) if p is not None else None for p in parts],
            "_n_parts": [len(p) if p is not None else 0 for p in parts],
        }
    )
    _check_not_empty(wide["_prompt"], row_numbers, source, "prompt")
    for i, model in enumerate(models):
        cost_column, response_column = model + WIDE_COST_SUFFIX, model + WIDE_RESPONSE_SUFFIX
        wide[f"_s{i}"] = _numbers(frame[model], row_numbers, source, model, low=0.0, high=1.0)
        wide[f"_c{i}"] = _numbers(frame[cost_column], row_numbers, source, cost_column, low=0.0)
        wide[f"_r{i}"] = _joined_texts(frame.get(response_column), len(frame))
    wide = _merge_repeated_samples(wide, models, source)
    return _melt(wide, models, source, dataset)


def _text_parts(value) -> list[str] | None:
    """The strings of a prompt or response cell: a list (or its Python literal) or one text."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(part) for part in value]
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value)
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:  # literal_eval, never eval: the cell is data, not code
            parsed = ast.literal_eval(stripped)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            parsed = None
        if isinstance(parsed, list) and all(isinstance(part, str) for part in parsed):
            return parsed
    return [text]


def _parsed_texts(column: pd.Series) -> list[list[str] | None]:
    # Parse each distinct cell once: the same response text recurs across rows.
    cells = column.tolist()
    try:
        cache = {value: _text_parts(value) for value in set(cells)}
    except TypeError:  # unhashable cells (real lists in a pickle): parse one by one
        return [_text_parts(value) for value in cells]
    return [cache[value] for value in cells]


def _joined_texts(column: pd.Series | None, length: int) -> pd.Series:
    if column is None:
        return pd.Series(pd.NA, index=range(length), dtype="string")
    return pd.Series(
        ["\n".join(p) if p is not None else None for p in _parsed_texts(column)], dtype="string"
    )


def _merge_repeated_samples(wide: pd.DataFrame, models: list[str], source: str) -> pd.DataFrame:
    """One row per sample_id where RouterBench stores a prompt twice.

    RouterBench's ARC data has sample_ids stored twice: once with the prompt
    and most models' labels, once with the same prompt repeated inside the
    prompt list and another model's label (see shared/data/README.md). Such
    copies are merged: the copy with the fewest prompt parts gives the prompt,
    costs and responses; labels it lacks come from the other copy. Copies
    whose prompts differ in more than repetition stay apart, to be reported as
    a prompt conflict.
    """
    keys = ["_sample_id", "_canonical"]
    repeated = wide.duplicated(keys, keep=False).to_numpy()
    if not repeated.any():
        return wide
    copies = wide[repeated].sort_values(["_n_parts", ROW], kind="stable")
    labels = [f"_s{i}" for i in range(len(models))]
    conflicting = copies.groupby(keys, sort=False)[labels].nunique() > 1
    if conflicting.to_numpy().any():
        group, label = np.argwhere(conflicting.to_numpy())[0]
        sample_id = conflicting.index[group][0]
        rows = copies.loc[copies["_sample_id"] == sample_id, ROW].sort_values().tolist()
        raise LogError(
            source,
            f"sample_id {sample_id!r} is stored in rows {rows} with different successes for this model",
            row=rows[-1],
            column=models[label],
        )
    merged = copies.groupby(keys, sort=False, as_index=False).first()  # first non-null per column
    return pd.concat([wide[~repeated], merged], ignore_index=True).sort_values(ROW, kind="stable")


def _melt(wide: pd.DataFrame, models: list[str], source: str, dataset: str) -> pd.DataFrame:
    """One long row per labelled (prompt, model) cell, in prompt order then model order."""
    success = wide[[f"_s{i}" for i in range(len(models))]].to_numpy(dtype="float64")
    cost = wide[[f"_c{i}" for i in range(len(models))]].to_numpy(dtype="float64")
    responses = wide[[f"_r{i}" for i in range(len(models))]].to_numpy(dtype=object, na_value=None)
    prompt_at, model_at = np.nonzero(~np.isnan(success))  # an empty label: model not run on the prompt
    cell_cost = cost[prompt_at, model_at]
    rows = pd.DataFrame(
        {
            "dataset": pd.array([dataset] * len(prompt_at), dtype="string"),
            "task": wide["_task"].to_numpy()[prompt_at],
            "prompt_id": wide["_sample_id"].to_numpy()[prompt_at],
            "prompt": wide["_prompt"].to_numpy()[prompt_at],
            "model": np.asarray(models, dtype=object)[model_at],
            "success": success[prompt_at, model_at],
            "cost_usd": cell_cost,
            "cost_source": np.where(np.isnan(cell_cost), None, "observed"),
            "response": responses[prompt_at, model_at],
            ROW: wide[ROW].to_numpy()[prompt_at],
            SOURCE: source,
        }
    )
    for column in ("dataset", "task", "prompt_id", "prompt", "model", "cost_source", "response"):
        rows[column] = rows[column].astype("string")
    return rows


# --------------------------------------------------------------------------- across rows and files


def _where(rows: pd.DataFrame, position: int, relative_to: str | None = None) -> str:
    source, row = rows[SOURCE].iat[position], int(rows[ROW].iat[position])
    return f"row {row}" if source == relative_to else f"{source} row {row}"


def _preview(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def _check_prompt_texts(rows: pd.DataFrame) -> None:
    """The same prompt_id must carry the same prompt text everywhere in its dataset."""
    # Positions of the first row of each (dataset, prompt_id, text); only their ids are
    # taken out, since copying 350k prompt texts would dominate the reading time.
    distinct = np.flatnonzero(~rows.duplicated(["dataset", "prompt_id", "prompt"]).to_numpy())
    ids = rows[["dataset", "prompt_id"]].take(distinct)
    clash = _first(ids.duplicated())
    if clash is None:
        return
    dataset, prompt_id = ids["dataset"].iat[clash], ids["prompt_id"].iat[clash]
    same_id = (ids["dataset"] == dataset).to_numpy() & (ids["prompt_id"] == prompt_id).to_numpy()
    second, first = distinct[clash], distinct[_first(same_id)]
    source = rows[SOURCE].iat[second]
    raise LogError(
        source,
        f"prompt_id {prompt_id!r} of dataset {dataset!r} has a different prompt text than at "
        f"{_where(rows, first, source)}: {_preview(rows['prompt'].iat[second])} vs "
        f"{_preview(rows['prompt'].iat[first])}",
        row=int(rows[ROW].iat[second]),
        column="prompt",
    )


def _without_repeated_outcomes(rows: pd.DataFrame) -> pd.DataFrame:
    """Drop repeats of a (dataset, prompt_id, model) with the same success; fail on any other repeat."""
    repeated = rows.duplicated(OUTCOME_KEY, keep=False).to_numpy()
    if not repeated.any():
        return rows
    copies = rows[repeated]
    groups = copies.groupby(OUTCOME_KEY, sort=False)
    first_source = groups[SOURCE].transform("first").to_numpy()
    first_success = groups["success"].transform("first").to_numpy()
    first_position = np.flatnonzero(repeated)[_group_first_positions(groups)]
    other_file = copies[SOURCE].to_numpy() != first_source
    other_success = copies["success"].to_numpy() != first_success
    bad = _first(other_file | other_success)
    if bad is not None:
        _fail_repeat(rows, np.flatnonzero(repeated)[bad], first_position[bad], bool(other_file[bad]))
    return rows[~rows.duplicated(OUTCOME_KEY, keep="first").to_numpy()].reset_index(drop=True)


def _group_first_positions(groups) -> np.ndarray:
    """For each row of a grouped frame, the position (within that frame) of its group's first row."""
    positions = pd.Series(np.arange(len(groups.obj)), index=groups.obj.index)
    return positions.groupby(groups.ngroup()).transform("first").to_numpy()


def _fail_repeat(rows: pd.DataFrame, later: int, first: int, across_files: bool):
    source = rows[SOURCE].iat[later]
    outcome = (
        f"dataset {rows['dataset'].iat[later]!r}, prompt_id {rows['prompt_id'].iat[later]!r}, "
        f"model {rows['model'].iat[later]!r}"
    )
    if across_files:
        message = (
            f"duplicate outcome ({outcome}): also at {_where(rows, first)}; "
            "files read together must not overlap"
        )
        column = "prompt_id"
    else:
        message = (
            f"conflicting duplicate outcome ({outcome}): success {rows['success'].iat[later]:g} here, "
            f"{rows['success'].iat[first]:g} at {_where(rows, first, source)}"
        )
        column = "success"
    raise LogError(source, message, row=int(rows[ROW].iat[later]), column=column)


def _token_count_of_each(texts: pd.Series) -> np.ndarray:
    """o200k counts of ``texts`` (0 for missing), tokenizing each distinct text once."""
    codes, distinct = pd.factorize(texts)
    counts = np.array([count_tokens(text) for text in distinct] + [0], dtype="int64")
    return counts[codes]  # code -1 (missing) picks the trailing 0


def _fill_token_counts(rows: pd.DataFrame) -> None:
    for column, text in (("input_tokens", "prompt"), ("output_tokens", "response")):
        if column not in rows:
            rows[column] = np.nan
        if text not in rows:
            rows[text] = pd.Series(pd.NA, index=rows.index, dtype="string")
        missing = rows[column].isna().to_numpy()
        if missing.any():
            counts = rows[column].to_numpy(dtype="float64", na_value=np.nan, copy=True)
            counts[missing] = _token_count_of_each(rows[text][missing])
            rows[column] = counts


def _fill_costs(rows: pd.DataFrame, prices: PriceTable | None) -> None:
    """Price rows without ``cost_usd`` from their token counts; recorded costs are 'observed'."""
    if "cost_usd" not in rows:
        rows["cost_usd"] = np.nan
    if "cost_source" not in rows:
        rows["cost_source"] = pd.Series(pd.NA, index=rows.index, dtype="string")
    cost = rows["cost_usd"].to_numpy(dtype="float64", na_value=np.nan, copy=True)
    unpriced = np.isnan(cost)
    rows["cost_source"] = rows["cost_source"].mask(~unpriced & rows["cost_source"].isna().to_numpy(), "observed")
    if not unpriced.any():
        return
    models = rows["model"][unpriced]
    known = set(prices) if prices is not None else set()
    bad = _first(~models.isin(known).to_numpy())
    if bad is not None:
        position = np.flatnonzero(unpriced)[bad]
        raise LogError(
            rows[SOURCE].iat[position],
            f"no cost_usd and no price for model {models.iat[bad]!r}, so the cost cannot be computed; "
            "pass --prices or a catalog that lists this model",
            row=int(rows[ROW].iat[position]),
            column="cost_usd",
        )
    codes, distinct = pd.factorize(models)
    per_input, per_output = prices.arrays(list(distinct))  # USD per token
    cost[unpriced] = (
        rows["input_tokens"].to_numpy(dtype="float64")[unpriced] * per_input[codes]
        + rows["output_tokens"].to_numpy(dtype="float64")[unpriced] * per_output[codes]
    )
    rows["cost_usd"] = cost
    rows["cost_source"] = rows["cost_source"].mask(unpriced, "priced")


def _canonical(rows: pd.DataFrame) -> pd.DataFrame:
    """Exactly the canonical columns (plus optional ones present) in their canonical dtypes."""
    columns = {**OUTCOME_COLUMNS, **{c: t for c, t in OPTIONAL_COLUMNS.items() if c in rows}}
    out = pd.DataFrame(index=rows.index)
    for column, dtype in columns.items():
        if column in rows and isinstance(rows[column].dtype, pd.CategoricalDtype):
            out[column] = rows[column]  # texts shared by many rows, kept as one copy each
        elif column in rows:
            out[column] = rows[column].astype(dtype)
        else:
            out[column] = pd.Series(pd.NA if dtype == "string" else np.nan, index=rows.index, dtype=dtype)
    return out.reset_index(drop=True)
