"""Model prices from maintained sources, offline.

Hand-kept prices age; two maintained price tables ship inside packages and
need no network:

* ``genai-prices`` — pydantic's price data package (a thrifty dependency);
* ``litellm`` — LiteLLM's bundled cost map
  (``model_prices_and_context_window_backup.json``), when LiteLLM is
  installed (``thrifty[litellm]``); read as a file, LiteLLM is not imported.

A source looks a catalog entry up by its upstream name (then its id) at its
provider — ``openai``, ``anthropic``, or for an ``openai-compatible`` entry
the host of its ``base_url`` — and answers USD per 1M input and output
tokens at the base rate, or None when it does not know the model.

Registry in the style of ``llm.get_model()``: :func:`get_price_source` by
name, :class:`UnknownPriceSourceError` naming the known ones.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlsplit

from models.catalog import Catalog, ModelSpec

PRICE_FIELDS = ("input_usd_per_mtok", "output_usd_per_mtok")


class UnknownPriceSourceError(KeyError):
    def __init__(self, name: str):
        super().__init__(f"unknown price source {name!r}; expected one of {sorted(PRICE_SOURCES)}")

    def __str__(self) -> str:
        return self.args[0]


class PriceSourceUnavailable(RuntimeError):
    """The package holding a source's data is not installed."""


@dataclass(frozen=True)
class SourcePrice:
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    ref: str  # what the source matched, e.g. "openai:gpt-4o"


@dataclass(frozen=True)
class PriceDisagreement:
    model: str
    field: str
    catalog: float
    source: float
    ref: str


class GenaiPrices:
    """pydantic's ``genai-prices`` data (bundled snapshot; never updated over the network here)."""

    name = "genai-prices"
    _PROVIDERS = {"openai": "openai", "anthropic": "anthropic"}

    @cached_property
    def version(self) -> str:
        return _version("genai-prices", self.name)

    def price(self, spec: ModelSpec) -> SourcePrice | None:
        self.version  # noqa: B018  (raises PriceSourceUnavailable when the package is missing)
        from genai_prices import Usage, calc_price

        where = {"provider_id": self._PROVIDERS[spec.provider]} if spec.provider in self._PROVIDERS else (
            {"provider_api_url": spec.base_url} if spec.base_url else None)
        if where is None:
            return None
        for ref in dict.fromkeys((spec.upstream, spec.id)):
            try:
                # 1000 tokens of each kind: the base rate (tiers start far above), exact in Decimal
                per_input = calc_price(Usage(input_tokens=1000, output_tokens=0), ref, **where)
                per_output = calc_price(Usage(input_tokens=0, output_tokens=1000), ref, **where)
            except LookupError:
                continue
            return SourcePrice(
                float(per_input.input_price * Decimal(1000)),
                float(per_output.output_price * Decimal(1000)),
                f"{per_input.provider.id}:{per_input.model.id}",
            )
        return None


class LiteLLMCostMap:
    """LiteLLM's bundled cost map, read from the installed package's JSON file."""

    name = "litellm"
    FILE = "model_prices_and_context_window_backup.json"
    _PROVIDERS = {"openai": "openai", "anthropic": "anthropic"}
    # openai-compatible hosts -> LiteLLM's provider name
    _HOSTS = {
        "api.together.xyz": "together_ai",
        "api.groq.com": "groq",
        "api.fireworks.ai": "fireworks_ai",
        "api.deepinfra.com": "deepinfra",
        "api.mistral.ai": "mistral",
        "openrouter.ai": "openrouter",
    }

    @cached_property
    def version(self) -> str:
        return _version("litellm", self.name)

    @cached_property
    def _table(self) -> dict:
        self.version  # noqa: B018
        spec = importlib.util.find_spec("litellm")
        folder = Path(next(iter(spec.submodule_search_locations)))
        return json.loads((folder / self.FILE).read_text())

    def _provider(self, spec: ModelSpec) -> str | None:
        if spec.provider in self._PROVIDERS:
            return self._PROVIDERS[spec.provider]
        host = urlsplit(spec.base_url or "").hostname
        return self._HOSTS.get(host or "")

    def price(self, spec: ModelSpec) -> SourcePrice | None:
        provider = self._provider(spec)
        if provider is None:
            return None
        table = self._table
        for ref in dict.fromkeys((spec.upstream, spec.id)):
            for key in (ref, f"{provider}/{ref}"):
                entry = table.get(key)
                if not isinstance(entry, dict) or entry.get("litellm_provider") != provider:
                    continue
                inp, out = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
                if inp is None or out is None:
                    continue
                # per-token floats carry binary noise: a per-1M price is a short decimal
                return SourcePrice(round(float(inp) * 1e6, 9), round(float(out) * 1e6, 9), f"{provider}:{key}")
        return None


PRICE_SOURCES: dict[str, Callable[[], object]] = {"genai-prices": GenaiPrices, "litellm": LiteLLMCostMap}


def get_price_source(name: str):
    try:
        return PRICE_SOURCES[name]()
    except KeyError:
        raise UnknownPriceSourceError(name) from None


def _version(dist: str, source: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        hint = "pip install 'thrifty[litellm]'" if dist == "litellm" else f"pip install {dist}"
        raise PriceSourceUnavailable(f"price source {source!r} needs the {dist} package ({hint})") from None


def with_source_prices(catalog: Catalog, source, models: Iterable[str] | None = None) -> tuple[Catalog, dict[str, str]]:
    """``catalog`` with the source's prices for the models it knows (all, or ``models``);
    returns the catalog and ``{model: what the source matched}`` for the prices replaced."""
    wanted = set(catalog.ids if models is None else models)
    used: dict[str, str] = {}
    for spec in list(catalog):
        if spec.id not in wanted:
            continue
        found = source.price(spec)
        if found is not None:
            catalog = catalog.replace(spec.id, input_usd_per_mtok=found.input_usd_per_mtok,
                                      output_usd_per_mtok=found.output_usd_per_mtok)
            used[spec.id] = found.ref
    return catalog, used


def compare_prices(catalog: Catalog, source, rel_tol: float = 1e-6) -> tuple[list[PriceDisagreement], list[str]]:
    """Where ``catalog``'s prices differ from ``source``'s, and the models the source does not know."""
    disagreements, unknown = [], []
    for spec in catalog:
        found = source.price(spec)
        if found is None:
            unknown.append(spec.id)
            continue
        for field in PRICE_FIELDS:
            ours, theirs = getattr(spec, field), getattr(found, field)
            if not math.isclose(ours, theirs, rel_tol=rel_tol, abs_tol=1e-12):
                disagreements.append(PriceDisagreement(spec.id, field, ours, theirs, found.ref))
    return disagreements, unknown


__all__ = [
    "GenaiPrices",
    "LiteLLMCostMap",
    "PRICE_SOURCES",
    "PriceDisagreement",
    "PriceSourceUnavailable",
    "SourcePrice",
    "UnknownPriceSourceError",
    "compare_prices",
    "get_price_source",
    "with_source_prices",
]
