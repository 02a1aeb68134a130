"""``thrifty models``: the catalog of models thrifty can dispatch to."""

from __future__ import annotations

from pathlib import Path

import click

from models.catalog import CatalogError, load_catalog
from models.prices import PriceTable
from models.settings import get_settings


@click.group()
def models():
    """The model catalog: which models exist, how to reach them, what they cost."""


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
