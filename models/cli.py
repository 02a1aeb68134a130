"""``thrifty models``: the catalog of models thrifty can dispatch to, and their prices."""

from __future__ import annotations

from pathlib import Path

import click

from models.catalog import CatalogError, default_catalog, load_catalog
from models.price_sources import (
    PRICE_SOURCES,
    PriceSourceUnavailable,
    UnknownPriceSourceError,
    compare_prices,
    get_price_source,
    with_source_prices,
)
from models.prices import PriceTable
from models.settings import get_settings


@click.group()
def models():
    """The model catalog: which models exist, how to reach them, what they cost."""


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _number(value: float) -> str:
    return f"{value:g}"


@models.command("prices")
@click.option("--source", default=None, metavar="NAME",
              help=f"maintained price source: {', '.join(sorted(PRICE_SOURCES))} (default: THRIFTY_PRICE_SOURCE, else genai-prices)")
@click.option("--check", is_flag=True, help="list where the shipped catalog's prices disagree with the source")
@click.option("--strict", is_flag=True, help="with --check: exit with status 1 when any price disagrees")
@click.option("--catalog", "catalogs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="catalog file(s) applied over the source's prices (repeatable)")
def prices(source, check, strict, catalogs):
    """The prices in force (USD per 1M tokens) and where each comes from.

    The shipped catalog's entries take the source's price where the source
    knows the model; catalog files (THRIFTY_CATALOG, --catalog) override both.
    With --check, the shipped catalog is compared with the source instead:
    one line per model and field that differ.
    """
    if strict and not check:
        raise click.UsageError("--strict applies to --check")
    name = source or get_settings().price_source or "genai-prices"
    try:
        chosen = get_price_source(name)
        if check:
            _check(chosen, strict)
            return
        shipped, used = with_source_prices(default_catalog(), chosen)
        catalog = load_catalog([*get_settings().catalog, *catalogs], price_source=name)
    except (CatalogError, PriceSourceUnavailable, UnknownPriceSourceError) as exc:
        raise click.ClickException(str(exc)) from None
    rows = []
    for spec in catalog:
        from_source = spec.id in used and spec.id in shipped and spec.price == shipped.get(spec.id).price
        origin = f"{name} ({used[spec.id]})" if from_source else "catalog"
        rows.append([spec.id, _number(spec.input_usd_per_mtok), _number(spec.output_usd_per_mtok), origin])
    click.echo(_table(["model", "input_usd_per_mtok", "output_usd_per_mtok", "price from"], rows))


def _check(source, strict: bool) -> None:
    shipped = default_catalog()
    disagreements, unknown = compare_prices(shipped, source)
    header = f"shipped catalog vs {source.name} {source.version}"
    if disagreements:
        rows = [[d.model, d.field, _number(d.catalog), _number(d.source), d.ref] for d in disagreements]
        click.echo(f"{header}: {len(disagreements)} price(s) differ")
        click.echo(_table(["model", "field", "catalog", "source", "source entry"], rows))
    else:
        click.echo(f"{header}: all {len(shipped) - len(unknown)} known prices agree")
    if unknown:
        click.echo(f"not in {source.name}: {', '.join(unknown)}")
    if strict and disagreements:
        click.get_current_context().exit(1)



def _router_models(uri: str) -> tuple[list[str], PriceTable]:
    """The models of the router at ``uri`` and the prices it was trained with."""
    from models.registry import RouterNotFoundError, load_python_model

    try:
        if Path(uri).suffix == ".joblib":
            if not Path(uri).is_file():
                raise RouterNotFoundError(uri, "no such file")
            import joblib

            router = joblib.load(uri)
        else:
            router = getattr(load_python_model(uri), "router", None)
    except RouterNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    names, prices = getattr(router, "models_", None), getattr(router, "prices_", None)
    if names is None or not isinstance(prices, PriceTable):
        raise click.ClickException(f"{uri} does not hold a fitted thrifty router")
    return list(names), prices


@models.command("init")
@click.option("--from-router", "router_uri", default=None, metavar="URI",
              help="the router whose models need entries: models:/NAME@ALIAS, a .joblib file (default: the champion)")
@click.option("--catalog", "catalogs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="catalog file(s) whose entries are copied for models they already know (repeatable)")
def init(router_uri, catalogs):
    """Write catalog entries for every model of a router (YAML on stdout).

    \b
    thrifty models init --from-router models:/thrifty@champion > catalog.yaml
    """
    from models.stubs import catalog_stub

    settings = get_settings()
    uri = router_uri or f"models:/{settings.registry_name}@champion"
    names, prices = _router_models(uri)
    try:
        known = load_catalog([*settings.catalog, *catalogs])
        click.echo(catalog_stub(names, prices, known, source=uri), nl=False)
    except (CatalogError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
