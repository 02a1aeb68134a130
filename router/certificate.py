"""What a router's served default promises: a quality floor against the best single model, held with a stated confidence.

Produced by training (``training.served``), stored with the registered router
as ``router.certificate_``, shown by serving. Plain data: serving reads it
without importing training.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field


def prices_digest(prices: dict) -> str:
    """A short content hash of a price table (``PriceTable.to_dict()``)."""
    return hashlib.sha256(json.dumps(prices, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Certificate:
    """The served default and the evidence for it.

    ``certified``: a setting cheaper than the best single model met the target
    with the stated confidence; when False the best model is served and
    ``reason`` says why. ``floor`` is the mean success the target asks for
    (``relative`` x the best model's success on the training prompts, or the
    absolute target); ``success_vs_best`` / ``cost_vs_best`` are the served
    setting's mean success and mean cost divided by the best model's, on
    cross-fitted predictions of the training prompts (so an estimate, not the
    guarantee). ``prices`` is the price table the setting was certified and
    decides under. ``safe_model``: the cheapest single model certified to keep
    the target on its own (the best model, unless a cheaper one ties with
    it); the threshold policy falls back to it. ``novelty_cut``: prompts more
    novel than this go to ``safe_model`` (None: no prompt is sent there for
    its novelty).
    """

    certified: bool
    policy: str
    knob: float
    best_model: str
    target: str  # e.g. "98% of the best single model's success"
    confidence: float
    relative: float | None = None
    absolute: float | None = None
    floor: float = math.nan
    best_success: float = math.nan
    success: float = math.nan
    success_vs_best: float = math.nan
    cost_vs_best: float = math.nan
    p_value: float = math.nan
    n_prompts: int = 0
    novelty_cut: float | None = None
    method: str = ""
    reason: str = ""
    prices_sha256: str = ""
    prices: dict = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)  # per evidence set (in-distribution, held-out tasks): success/cost vs best
    safe_model: str = ""  # where the fallback and the novelty guard send prompts: the cheapest model certified alone

    @property
    def guard_model(self) -> str:
        return self.safe_model or self.best_model

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Certificate":
        return cls(**data)

    def summary(self) -> dict:
        """What serving shows: the promise, without the evidence or the price table."""
        return {
            "certified": self.certified,
            "target": self.target,
            "confidence": self.confidence,
            "floor": self.floor,
            "best_model": self.best_model,
            "safe_model": self.guard_model,
            "novelty_cut": self.novelty_cut,
            "expected_cost_vs_best": self.cost_vs_best,
            "expected_success_vs_best": self.success_vs_best,
            "prices_sha256": self.prices_sha256,
        }

    def describe(self) -> str:
        """One or two lines for people."""
        if not self.certified:
            return f"no setting cheaper than the best single model is certified: {self.reason}; serving {self.best_model}"
        guard = f"; prompts with novelty above {self.novelty_cut:.2f} go to {self.guard_model}" if self.novelty_cut is not None else ""
        return (
            f"certified with {self.confidence:.0%} confidence: success >= {self.target} (floor {self.floor:.3f}); "
            f"{self.policy} knob {self.knob:.6g}, expected {self.success_vs_best:.3f}x the success and "
            f"{self.cost_vs_best:.3f}x the cost of {self.best_model} on {self.n_prompts} cross-fitted training prompts{guard}"
        )


def price_drift(certified: dict, current: dict) -> dict[str, tuple[list, list]]:
    """Models priced differently now than when a certificate was issued: model -> (certified, current) [in, out] USD per 1M tokens.

    ``certified``/``current``: ``PriceTable.to_dict()`` tables; a model the current table lacks is not drift (it cannot be routed to).
    """
    drift = {}
    for model, then in certified.items():
        now = current.get(model)
        if now is not None and [float(x) for x in now] != [float(x) for x in then]:
            drift[model] = (list(then), list(now))
    return drift
