"""The model catalog: which models exist, how to reach them and what they cost.

A small registry in the spirit of ``llm.get_model()``: ``Catalog.get(id)``
returns a :class:`ModelSpec` or raises :class:`UnknownModelError` (a
``KeyError``) naming the id and the closest known ids.

Sources, later ones overriding earlier ones by model id:

1. ``models/catalog.yaml`` shipped with the project;
2. any user catalog files (YAML or JSON, same layout), where an entry may give
   only the fields it changes;
3. a prices CSV in the schema of ``shared/data/prices.csv``
   (``model, provider, input_usd_per_mtok, output_usd_per_mtok, note``).

The shipped entries' prices can come from a maintained price source
(``THRIFTY_PRICE_SOURCE=genai-prices`` or ``litellm``; see
``models/price_sources.py``) instead of the hand-kept values; files given by
the user still override them.

Prompt caching has prices of its own: ``cached_input_usd_per_mtok`` (input
read from the provider's cache), ``cache_write_usd_per_mtok`` (input written
to it; Anthropic's five-minute TTL) and ``cache_write_1h_usd_per_mtok``
(Anthropic's one-hour TTL). Left out, each is the provider's published ratio
to the input price (:data:`CACHE_RATIOS`): OpenAI reads at 0.5x (the gpt-4o
family; the catalog gives other families their own), writes free; Anthropic
reads at 0.1x, writes at 1.25x (5 minutes) and 2x (1 hour); an
OpenAI-compatible server at the full input price (no discount assumed).
"""

from __future__ import annotations

import csv
import difflib
import json
import math
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator, Literal, Mapping

import yaml

from models.prices import Price, PriceTable

Provider = Literal["openai", "anthropic", "openai-compatible"]
PROVIDERS: tuple[str, ...] = ("openai", "anthropic", "openai-compatible")
DEFAULT_CONTEXT_WINDOW = 8192
# provider -> (cache read, cache write 5 min, cache write 1 h) as multiples of the input price
CACHE_RATIOS: dict[str, tuple[float, float, float]] = {
    "openai": (0.5, 1.0, 1.0),
    "anthropic": (0.1, 1.25, 2.0),
    "openai-compatible": (1.0, 1.0, 1.0),
}


class CatalogError(ValueError):
    """A catalog or prices file is malformed; the message names file, entry and field."""


class UnknownModelError(KeyError):
    """No model with this id is in the catalog."""

    def __init__(self, model_id: str, known: Iterable[str] = ()):
        self.model_id = model_id
        close = difflib.get_close_matches(model_id, list(known), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        super().__init__(f"unknown model {model_id!r}{hint}")

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return self.args[0]


@dataclass(frozen=True)
class ModelSpec:
    """One model a request can be sent to."""

    id: str
    provider: str
    upstream: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    context_window: int = DEFAULT_CONTEXT_WINDOW
    base_url: str | None = None
    api_key_env: str | None = None
    max_output_tokens: int | None = None
    vendor: str | None = None
    # Whether the upstream continues a trailing assistant message (a prefill), which lets a
    # stream cut mid-answer be finished by this model. None: the provider's default
    # (Anthropic: yes; OpenAI and OpenAI-compatible servers: no, as many start a new message).
    assistant_prefill: bool | None = None
    cached_input_usd_per_mtok: float | None = None  # default: CACHE_RATIOS of the provider
    cache_write_usd_per_mtok: float | None = None
    cache_write_1h_usd_per_mtok: float | None = None

    @property
    def price(self) -> Price:
        # an OpenAI-compatible server says nothing about whose model it serves
        vendor = self.vendor or (None if self.provider == "openai-compatible" else self.provider)
        return Price(self.input_usd_per_mtok, self.output_usd_per_mtok, vendor=vendor)

    def cache_prices(self) -> tuple[float, float, float]:
        """USD per 1M input tokens read from the cache, written to it (5 min), written to it (1 h)."""
        ratios = CACHE_RATIOS.get(self.provider, (1.0, 1.0, 1.0))
        given = (self.cached_input_usd_per_mtok, self.cache_write_usd_per_mtok, self.cache_write_1h_usd_per_mtok)
        return tuple(g if g is not None else r * self.input_usd_per_mtok for g, r in zip(given, ratios))  # type: ignore[return-value]

    def cost(self, input_tokens: float, output_tokens: float, *, cache_read_tokens: float = 0,
             cache_write_tokens: float = 0, cache_write_1h_tokens: float = 0) -> float:
        """USD cost of a call with this usage; ``input_tokens`` counts all input, the cache parts included."""
        if not (cache_read_tokens or cache_write_tokens or cache_write_1h_tokens):
            return self.price.cost(input_tokens, output_tokens)
        read, write, write_1h = self.cache_prices()
        uncached = max(0.0, input_tokens - cache_read_tokens - cache_write_tokens - cache_write_1h_tokens)
        return self.price.cost(uncached, output_tokens) + (
            cache_read_tokens * read + cache_write_tokens * write + cache_write_1h_tokens * write_1h) / 1e6

    @property
    def max_input_usd_per_mtok(self) -> float:
        """The dearest rate an input token can be billed at (a cache write may cost more than plain input)."""
        return max(self.input_usd_per_mtok, *self.cache_prices())

    @property
    def wire_format(self) -> str:
        """The HTTP protocol this model speaks: ``anthropic`` or ``openai``."""
        return "anthropic" if self.provider == "anthropic" else "openai"


_REQUIRED = ("id", "provider", "input_usd_per_mtok", "output_usd_per_mtok")
_FIELDS = set(ModelSpec.__dataclass_fields__)


def _spec_from_entry(entry: Mapping, where: str) -> ModelSpec:
    unknown = set(entry) - _FIELDS
    if unknown:
        raise CatalogError(f"{where}: unknown field(s) {sorted(unknown)}")
    for key in _REQUIRED:
        if entry.get(key) in (None, ""):
            raise CatalogError(f"{where}: missing field {key!r}")
    data = dict(entry)
    data.setdefault("upstream", data["id"])
    if data["provider"] not in PROVIDERS:
        raise CatalogError(
            f"{where}: field 'provider' is {data['provider']!r}; expected one of {PROVIDERS}"
        )
    for key in ("input_usd_per_mtok", "output_usd_per_mtok"):
        data[key] = _non_negative(data[key], where, key)
    if data.get("assistant_prefill") is not None and not isinstance(data["assistant_prefill"], bool):
        raise CatalogError(f"{where}: field 'assistant_prefill' must be true or false, got {data['assistant_prefill']!r}")
    for key in ("cached_input_usd_per_mtok", "cache_write_usd_per_mtok", "cache_write_1h_usd_per_mtok"):
        if data.get(key) is not None:
            data[key] = _non_negative(data[key], where, key)
    for key in ("context_window", "max_output_tokens"):
        if data.get(key) is not None:
            try:
                data[key] = int(data[key])
            except (TypeError, ValueError):
                raise CatalogError(f"{where}: field {key!r} is not an integer: {data[key]!r}") from None
            if data[key] <= 0:
                raise CatalogError(f"{where}: field {key!r} must be positive")
    return ModelSpec(**data)


def _non_negative(value, where: str, key: str, noun: str = "field") -> float:
    """``value`` as a finite number >= 0, or a CatalogError naming where it is (``noun``: field or column)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CatalogError(f"{where}: {noun} {key!r} is not a number: {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise CatalogError(f"{where}: {noun} {key!r} must be a finite number >= 0, got {value!r}")
    return number


class Catalog:
    """An ordered, immutable registry of :class:`ModelSpec` by id."""

    def __init__(self, specs: Iterable[ModelSpec] = ()):
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            self._specs[spec.id] = spec

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self._specs[model_id]
        except KeyError:
            raise UnknownModelError(model_id, self._specs) from None

    __getitem__ = get

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._specs

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def ids(self) -> list[str]:
        return list(self._specs)

    def merged(self, entries: Iterable[Mapping], source: str) -> "Catalog":
        """A new catalog with ``entries`` added; an entry whose id exists overrides only the fields it gives."""
        specs = dict(self._specs)
        for i, entry in enumerate(entries):
            where = f"{source}: entry {i}"
            if not isinstance(entry, Mapping):
                raise CatalogError(f"{where}: expected a mapping, got {type(entry).__name__}")
            model_id = entry.get("id")
            if not model_id:
                raise CatalogError(f"{where}: missing field 'id'")
            where = f"{source}: entry {i} ({model_id})"
            if model_id in specs:
                base = asdict(specs[model_id])
                unknown = set(entry) - _FIELDS
                if unknown:
                    raise CatalogError(f"{where}: unknown field(s) {sorted(unknown)}")
                specs[model_id] = _spec_from_entry({**base, **entry}, where)
            else:
                specs[model_id] = _spec_from_entry(entry, where)
        return Catalog(specs.values())

    def with_file(self, path: str | Path) -> "Catalog":
        path = Path(path)
        if path.suffix.lower() == ".csv":
            return self.merged(read_prices_csv(path), str(path))
        return self.merged(_read_catalog_file(path), str(path))

    def prices(self) -> PriceTable:
        return PriceTable({s.id: s.price for s in self})

    def replace(self, model_id: str, **changes) -> "Catalog":
        spec = replace(self.get(model_id), **changes)
        return Catalog([spec if s.id == model_id else s for s in self])


def _read_catalog_file(path: Path) -> list[Mapping]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalog file: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise CatalogError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    if isinstance(data, Mapping):
        data = data.get("models")
    if not isinstance(data, list):
        raise CatalogError(f"{path}: expected a list of models (or a mapping with key 'models')")
    return data


PRICES_COLUMNS = ("model", "provider", "input_usd_per_mtok", "output_usd_per_mtok")


def read_prices_csv(path: str | Path) -> list[dict]:
    """Catalog entries from a prices CSV in the schema of ``shared/data/prices.csv``.

    Vendors other than ``openai`` and ``anthropic`` become ``openai-compatible``
    entries: the price is known, the ``base_url`` must come from a catalog file.
    """
    path = Path(path)
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read prices file: {exc.strerror}") from None
    entries = []
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in PRICES_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CatalogError(f"{path}: missing column(s) {missing}")
        for row_number, row in enumerate(reader, start=2):  # header is line 1
            where = f"{path}: line {row_number}"
            model = (row["model"] or "").strip()
            if not model:
                raise CatalogError(f"{where}, column 'model': empty model name")
            vendor = (row["provider"] or "").strip()
            entries.append(
                {
                    "id": model,
                    "provider": vendor if vendor in ("openai", "anthropic") else "openai-compatible",
                    "upstream": model,
                    "vendor": vendor or None,
                    "input_usd_per_mtok": _non_negative(row["input_usd_per_mtok"], where, "input_usd_per_mtok", "column"),
                    "output_usd_per_mtok": _non_negative(row["output_usd_per_mtok"], where, "output_usd_per_mtok", "column"),
                }
            )
    return entries


def default_catalog() -> Catalog:
    text = resources.files("models").joinpath("catalog.yaml").read_text()
    return Catalog().merged(yaml.safe_load(text)["models"], "models/catalog.yaml")


FROM_SETTINGS = "from-settings"


def load_catalog(
    paths: Iterable[str | Path] = (), *, include_default: bool = True, price_source: str | None = FROM_SETTINGS
) -> Catalog:
    """The shipped catalog, extended and overridden by ``paths`` in order.

    With a ``price_source`` (a name from :mod:`models.price_sources`; by
    default the ``THRIFTY_PRICE_SOURCE`` setting, off unless set), the shipped
    entries take that source's prices where it knows the model; the files in
    ``paths`` still override them.
    """
    catalog = default_catalog() if include_default else Catalog()
    if price_source == FROM_SETTINGS:
        from models.settings import get_settings

        price_source = get_settings().price_source
    if price_source and include_default:
        from models.price_sources import PriceSourceUnavailable, UnknownPriceSourceError, get_price_source, with_source_prices

        try:
            catalog, _ = with_source_prices(catalog, get_price_source(price_source))
        except (UnknownPriceSourceError, PriceSourceUnavailable) as exc:
            raise CatalogError(f"price source (THRIFTY_PRICE_SOURCE): {exc}") from None
    for path in paths:
        catalog = catalog.with_file(path)
    return catalog
