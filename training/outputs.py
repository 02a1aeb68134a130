"""Run outputs as files: JSON in which every missing number is ``null``.

JSON has no infinity and no NaN; Python's encoder would write the
non-standard ``Infinity``/``NaN``, and strings like ``"inf"`` make a column
of numbers half text. A number that is not finite (not defined, or never
reached) is written as ``null``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def json_safe(value):
    """``value`` with numpy scalars made Python numbers and every non-finite float made None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(json_safe(value), indent=2, allow_nan=False))
    return path
