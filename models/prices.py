"""Per-token prices of models, and the cost of a call from its usage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

PER_MTOK = 1_000_000.0


@dataclass(frozen=True)
class Price:
    """USD per one million input and output tokens.

    ``vendor``: whose API the price refers to (``openai``, ``anthropic``,
    ``google``, ``together``, … as in a prices CSV's ``provider`` column), when
    known. It travels with a router's prices so that ``thrifty models init``
    can write a catalog stub for each of its models; it is not part of the price.
    """

    input_usd_per_mtok: float
    output_usd_per_mtok: float
    vendor: str | None = field(default=None, compare=False)

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        return (
            input_tokens * self.input_usd_per_mtok
            + output_tokens * self.output_usd_per_mtok
        ) / PER_MTOK


@dataclass(frozen=True)
class PriceTable:
    """Prices of a set of models: the explicit cost argument of every routing call.

    A router never reads a price out of a model's name; whoever asks for a
    decision passes the prices in force (the catalog's, or those the router
    learned from observed costs at training time).
    """

    prices: Mapping[str, Price] = field(default_factory=dict)

    def __contains__(self, model: str) -> bool:
        return model in self.prices

    def __getitem__(self, model: str) -> Price:
        return self.prices[model]

    def __iter__(self):
        return iter(self.prices)

    def __len__(self) -> int:
        return len(self.prices)

    def missing(self, models: Iterable[str]) -> list[str]:
        return [m for m in models if m not in self.prices]

    def arrays(self, models: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Input and output USD per token, aligned with ``models``."""
        models = list(models)
        missing = self.missing(models)
        if missing:
            raise KeyError(f"no price for model(s): {', '.join(missing)}")
        inp = np.array([self.prices[m].input_usd_per_mtok for m in models]) / PER_MTOK
        out = np.array([self.prices[m].output_usd_per_mtok for m in models]) / PER_MTOK
        return inp, out

    def merged(self, other: "PriceTable") -> "PriceTable":
        """A table with ``other``'s prices taking precedence."""
        return PriceTable({**self.prices, **other.prices})

    def to_dict(self) -> dict[str, list[float]]:
        return {
            m: [p.input_usd_per_mtok, p.output_usd_per_mtok]
            for m, p in self.prices.items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Iterable[float]]) -> "PriceTable":
        return cls({m: Price(*map(float, v)) for m, v in data.items()})
