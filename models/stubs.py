"""Catalog stubs for a router's models: what serving needs to reach each of them.

A router knows its models' names and the prices it was trained with (each
price carrying its vendor when the catalog or prices CSV named one). Serving
also needs, per model, a provider, the upstream's model id, a base URL for an
OpenAI-compatible server and the variable holding the key. :func:`catalog_stub`
writes one catalog entry per model: copied from the catalog when it already
knows the model, else filled from the vendor registry (``models.vendors``),
with a comment on every field a person must check or fill in.
"""

from __future__ import annotations

import json
from typing import Iterable

from models.catalog import Catalog, ModelSpec
from models.prices import PriceTable
from models.vendors import VENDORS, guess_vendor

FILL_IN = "FILL IN"


def _scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(float(f"{value:.6g}"))  # implied prices carry noise beyond a cent's fraction
    if isinstance(value, int):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid YAML scalar, whatever it contains


def _entry(fields: list[tuple[str, object, str]]) -> list[str]:
    lines = []
    for i, (key, value, comment) in enumerate(fields):
        text = f"{'  - ' if i == 0 else '    '}{key}: {_scalar(value)}"
        lines.append(f"{text:<60}  # {comment}" if comment else text)
    return lines


def _from_catalog(spec: ModelSpec) -> list[str]:
    fields: list[tuple[str, object, str]] = [("id", spec.id, "already in the catalog: nothing to fill in")]
    for key in ("provider", "upstream", "base_url", "api_key_env", "input_usd_per_mtok", "output_usd_per_mtok",
                "context_window", "max_output_tokens", "vendor"):
        value = getattr(spec, key)
        if value is not None:
            fields.append((key, value, ""))
    return _entry(fields)


def _stub(model: str, prices: PriceTable) -> list[str]:
    price = prices[model]
    vendor, how = price.vendor, "from the prices the router was trained with"
    if vendor is None:
        vendor, how = guess_vendor(model), "guessed from the model name: check"
    known = VENDORS.get(vendor) if vendor else None
    fields: list[tuple[str, object, str]] = [("id", model, "the name the router knows it by")]
    if known is None:
        fields += [
            ("provider", "openai-compatible", f"vendor {vendor or 'unknown'}: any OpenAI-compatible server (vLLM, Ollama, Together, ...)"),
            ("upstream", model, "the model's id on that server: check"),
            ("base_url", None, f"{FILL_IN}: the server's URL, e.g. http://localhost:8000/v1 (or upstreams.openai-compatible.base_url in the config)"),
            ("api_key_env", None, f"{FILL_IN} if the server needs a key: the variable that holds it"),
        ]
    else:
        fields += [("provider", known.provider, f"vendor {known.name}, {how}")]
        fields += [("upstream", model, f"the model's id at {known.name}: check")]
        if known.provider == "openai-compatible":
            fields += [("base_url", known.base_url, f"{known.name}'s OpenAI-compatible endpoint")]
        fields += [("api_key_env", known.api_key_env, "set this variable to your key before `thrifty serve`")]
    fields += [
        ("input_usd_per_mtok", price.input_usd_per_mtok, "USD per 1M input tokens, as trained"),
        ("output_usd_per_mtok", price.output_usd_per_mtok, "USD per 1M output tokens, as trained"),
    ]
    if vendor:
        fields += [("vendor", vendor, "")]
    return _entry(fields)


def catalog_stub(models: Iterable[str], prices: PriceTable, known: Catalog, *, source: str) -> str:
    """A catalog file (YAML text, with comments) holding one entry per model of a router."""
    models = list(models)
    missing = prices.missing(models)
    if missing:
        raise ValueError(f"{source}: the router has no price for model(s) {', '.join(missing)}")
    todo = [m for m in models if m not in known]
    lines = [
        f"# Catalog entries for the {len(models)} models of the router {source}",
        "# (written by `thrifty models init`). Check every field marked FILL IN or check,",
        "# then name this file in the serve config:  catalog: [this-file.yaml]",
        f"# {len(todo)} of them are not in the catalog yet. Prices are the ones the router was",
        "# trained with, in USD per 1M tokens; each key is read from the variable api_key_env names.",
        "models:",
    ]
    for model in models:
        lines += _from_catalog(known.get(model)) if model in known else _stub(model, prices)
    return "\n".join(lines) + "\n"
