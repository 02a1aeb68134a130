"""What a user asks of a router's default or of a tuned profile: a quality or a cost target."""

from __future__ import annotations

from dataclasses import dataclass


class TargetError(ValueError):
    """The target cannot be met by any setting of the router on the validation split."""


@dataclass
class Target:
    """What ``thrifty tune`` is asked for: exactly one of a quality or a cost per request."""

    quality: float | None = None  # absolute mean success
    relative: float | None = None  # share of the best single model's success rate
    max_cost: float | None = None  # USD per request
    budget: float | None = None  # USD, with ``requests`` expected requests
    requests: int | None = None

    @classmethod
    def parse(
        cls,
        target_quality: str | None = None,
        max_cost: float | None = None,
        budget: float | None = None,
        requests: int | None = None,
        *,
        relative: bool = False,
    ) -> "Target":
        """The target of CLI options; ``relative`` reads a plain ``--target-quality`` number as a share of the best single model."""
        given = [x is not None for x in (target_quality, max_cost, budget)]
        if sum(given) != 1:
            raise ValueError("give exactly one target: --target-quality, --max-cost-per-request or --budget (with --requests)")
        if relative and target_quality is None:
            raise ValueError("--relative applies to --target-quality only")
        if budget is not None:
            if not requests or requests <= 0:
                raise ValueError("--budget needs --requests, the expected number of requests it must pay for")
            if budget <= 0:
                raise ValueError("--budget must be positive")
            return cls(budget=float(budget), requests=int(requests))
        if max_cost is not None:
            if max_cost <= 0:
                raise ValueError("--max-cost-per-request must be positive")
            return cls(max_cost=float(max_cost))
        text = str(target_quality).strip()
        try:
            if text.endswith("%"):
                value = float(text[:-1]) / 100
                if not 0 < value <= 1.5:
                    raise ValueError
                return cls(relative=value)
            value = float(text)
        except ValueError:
            raise ValueError(
                f"--target-quality {target_quality!r}: give a success rate in (0, 1] (e.g. 0.8), "
                "or a share of the best single model (e.g. 95%, or 0.95 with --relative)"
            ) from None
        if relative:
            if not 0 < value <= 1.5:
                raise ValueError(f"--target-quality {value} --relative: give a share of the best single model's success, e.g. 0.98")
            return cls(relative=value)
        if not 0 < value <= 1:
            raise ValueError(
                f"--target-quality {value}: an absolute target is a success rate in (0, 1]; "
                "for a share of the best single model write e.g. 95% or add --relative"
            )
        return cls(quality=value)

    @property
    def cost_cap(self) -> float | None:
        if self.max_cost is not None:
            return self.max_cost
        if self.budget is not None:
            return self.budget / self.requests
        return None

    def quality_floor(self, best_single: float) -> float | None:
        if self.quality is not None:
            return self.quality
        if self.relative is not None:
            return self.relative * best_single
        return None

    def describe(self, best_single: float | None = None) -> str:
        if self.budget is not None:
            return f"budget ${self.budget:g} for {self.requests} requests (${self.cost_cap:.3g} per request)"
        if self.max_cost is not None:
            return f"at most ${self.max_cost:.3g} per request"
        if self.relative is not None:
            extra = f" = {self.relative * best_single:.3f}" if best_single is not None else ""
            return f"success >= {self.relative:.0%} of the best single model{extra}"
        return f"success >= {self.quality:.3f}"
