"""Model catalog, prices, token estimates and provider clients.

The bottom layer of thrifty: it knows what models exist, what a call to one
costs and how to reach it. It imports nothing from ``router``, ``training``
or ``serving``.
"""

from models.catalog import (
    Catalog,
    CatalogError,
    ModelSpec,
    UnknownModelError,
    load_catalog,
)
from models.prices import PriceTable

__all__ = [
    "Catalog",
    "CatalogError",
    "ModelSpec",
    "PriceTable",
    "UnknownModelError",
    "load_catalog",
]
