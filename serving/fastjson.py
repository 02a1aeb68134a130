"""JSON on the request path: pydantic-core's parser and serializer, with the standard library's acceptance.

``loads`` accepts exactly what ``json.loads`` accepts (a document the fast
parser refuses, e.g. a lone surrogate escape or a UTF-8 BOM, is parsed again
by ``json.loads``, which also gives the error message). ``dumps`` writes
compact UTF-8 JSON, as ``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)``
would (floats in shortest round-trip form; NaN and infinities as the
``json`` module writes them); what it cannot encode (lone surrogates, exotic
keys) falls back to ``json.dumps``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import to_json

from models.providers.raw import loads

__all__ = ["dumps", "loads"]


def dumps(obj: Any) -> bytes:
    try:
        return to_json(obj)
    except Exception:  # noqa: BLE001 - anything the fast path cannot encode: the standard library decides
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode()
