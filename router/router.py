"""The router: per-model success and cost predictions, and a policy over them.

In the spirit of RouteLLM's ``Router`` — one scoring method, and a
``route()`` built on it — but over N models, and with prices passed in
explicitly: whoever asks for a decision says what each model costs (the
catalog in force), and a price is never parsed out of a model name.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from models.prices import PriceTable
from models.tokens import count_tokens
from router.decision import Candidate, Decision
from router.features import TextFeaturizer
from router.novelty import NoveltyScorer
from router.policy import Threshold
from router.predictors import LightGBMSuccess, TokenRegressor


class RoutingError(ValueError):
    """No decision can be made: no candidate model is both known to the router and priced."""


@dataclass(frozen=True)
class Scores:
    """Predictions for ``n`` prompts and ``m`` models (columns in the order of ``models``)."""

    models: list[str]
    p: np.ndarray  # (n, m) predicted success
    input_tokens: np.ndarray  # (n,) prompt tokens
    output_tokens: np.ndarray  # (n, m) expected output tokens
    cost: np.ndarray  # (n, m) expected USD per call
    novelty: np.ndarray | None = None  # (n,) how unlike the training prompts (1.0 = typical; see router.novelty)


class Router:
    """Predicts, per prompt and model, the chance of success and the expected cost.

    Parameters
    ----------
    featurizer: turns prompt texts into features (fitted here).
    success: a success predictor (``LightGBMSuccess``, ``LogisticSuccess``, ``KNNSuccess``).
    tokens: an output-token predictor (``TokenRegressor``).
    policy: the default policy of ``route()``.
    novelty: a novelty scorer (``NoveltyScorer``) fitted on the training prompts' features.

    Learned state besides the fitted parts: ``certificate_`` (a
    :class:`router.certificate.Certificate`, set by training with
    :meth:`with_policy`): the promise of the default policy, the prices it
    was certified under, and the novelty above which the default sends a
    prompt to the best single model.
    """

    def __init__(self, featurizer=None, success=None, tokens=None, policy=None, novelty=None):
        self.featurizer = featurizer
        self.success = success
        self.tokens = tokens
        self.policy = policy
        self.novelty = novelty

    # -- fitting -------------------------------------------------------
    def fit(
        self,
        texts: Sequence[str],
        success: np.ndarray,
        output_tokens: np.ndarray,
        models: Sequence[str],
        prices: PriceTable,
        weights: np.ndarray | None = None,
    ) -> "Router":
        """Fit on ``n`` unique prompts: ``success`` and ``output_tokens`` are ``(n, m)`` with NaN where unobserved."""
        self.featurizer_ = self.featurizer if self.featurizer is not None else TextFeaturizer()
        self.success_ = self.success if self.success is not None else LightGBMSuccess()
        self.tokens_ = self.tokens if self.tokens is not None else TokenRegressor()
        self.policy_ = self.policy if self.policy is not None else Threshold(0.7)
        missing = prices.missing(models)
        if missing:
            raise RoutingError(f"no price for model(s) {missing}")
        X = self.featurizer_.fit_transform(list(texts))
        self._fit_novelty(X)
        self.success_.fit(X, success, weights, models=models)
        self.tokens_.fit(X, output_tokens, None, models=models)
        return self._fitted_for(models, prices)

    @classmethod
    def from_fitted(cls, featurizer, success, tokens, policy, models: Sequence[str], prices: PriceTable, X) -> "Router":
        """A router of components already fitted on the same prompts (a distributed fit fits them apart).

        ``X``: those prompts' features, on which the novelty scorer is fitted here, as :meth:`fit` does.
        """
        router = cls(featurizer, success, tokens, policy)
        router.featurizer_, router.success_, router.tokens_, router.policy_ = featurizer, success, tokens, policy
        router._fit_novelty(X)
        return router._fitted_for(models, prices)

    def _fit_novelty(self, X) -> None:
        self.novelty_ = (self.novelty if self.novelty is not None else NoveltyScorer()).fit(X)

    def _fitted_for(self, models: Sequence[str], prices: PriceTable) -> "Router":
        missing = prices.missing(models)
        if missing:
            raise RoutingError(f"no price for model(s) {missing}")
        self.models_ = list(models)
        self.prices_ = PriceTable({m: prices[m] for m in models})
        return self

    # -- fitted variants -----------------------------------------------
    def with_policy(self, policy, **learned) -> "Router":
        """This fitted router with another default policy; ``self`` is left unchanged.

        ``learned``: learned state that comes with the policy (names ending in
        ``_``), e.g. ``selection_`` — how the policy was chosen.
        """
        not_learned = [k for k in learned if not k.endswith("_") or k.startswith("_")]
        if not_learned:
            raise ValueError(f"learned state is named with a trailing underscore; got {not_learned}")
        other = copy.copy(self)
        other.policy = other.policy_ = policy
        for name, value in learned.items():
            setattr(other, name, value)
        return other

    def with_success(self, success) -> "Router":
        """This fitted router with another success predictor, fitted on the same features and models."""
        if list(getattr(success, "models_", ())) != self.models_:
            raise ValueError(f"the success predictor was fitted on {getattr(success, 'models_', None)}, this router on {self.models_}")
        other = copy.copy(self)
        other.success = other.success_ = success
        return other

    # -- scoring -------------------------------------------------------
    def features(self, texts: Sequence[str]) -> np.ndarray:
        return self.featurizer_.transform(texts)

    def score_features(
        self, X: np.ndarray, input_tokens: np.ndarray, prices: PriceTable, models: Sequence[str] | None = None
    ) -> Scores:
        """Scores from precomputed features (replay featurizes each prompt once)."""
        cols = self._columns(prices, models)
        names = [self.models_[j] for j in cols]
        p = self.success_.predict_proba(X)[:, cols]
        out = self.tokens_.predict(X)[:, cols]
        in_price, out_price = prices.arrays(names)
        input_tokens = np.asarray(input_tokens, dtype=np.float64)
        cost = input_tokens[:, None] * in_price + out * out_price
        novelty = getattr(self, "novelty_", None)  # routers saved before novelty scores have none
        return Scores(names, p, input_tokens, out, cost, None if novelty is None else novelty.score(X))

    def score(self, texts: Sequence[str], prices: PriceTable, models: Sequence[str] | None = None) -> Scores:
        texts = list(texts)
        tokens = np.array([count_tokens(t) for t in texts], dtype=np.float64)
        return self.score_features(self._features(texts, tokens), tokens, prices, models)

    def _features(self, texts: list[str], tokens: np.ndarray) -> np.ndarray:
        """``features(texts)``; the built-in featurizer reuses the token counts (one tokenizer pass per prompt)."""
        if type(self.featurizer_) is TextFeaturizer:  # a subclass may override transform_one without n_tokens
            return self.featurizer_.transform(texts, n_tokens=tokens.tolist())
        return self.features(texts)

    def _columns(self, prices: PriceTable, models: Sequence[str] | None) -> list[int]:
        known = set(self.models_)
        wanted = self.models_ if models is None else [m for m in models if m in known]
        if models is not None:
            unknown = [m for m in models if m not in known]
            if unknown:
                raise RoutingError(f"model(s) {unknown} are not known to this router; it knows {self.models_}")
        cols = [self.models_.index(m) for m in wanted if m in prices]
        if not cols:
            raise RoutingError("no candidate model: none of the requested models has a price")
        return cols

    # -- deciding ------------------------------------------------------
    def route(
        self,
        text: str,
        prices: PriceTable,
        policy=None,
        *,
        allowed: Sequence[str] | None = None,
        min_quality: float | None = None,
        max_cost: float | None = None,
        version: str | None = None,
    ) -> Decision:
        """Decide one prompt. ``allowed`` narrows the candidates; ``min_quality``
        and ``max_cost`` (USD per request) narrow what is acceptable. If nothing
        meets them, the policy's choice among the allowed models is returned with
        ``fallback=True``."""
        scores = self.score([text], prices, allowed)
        return self.decide(scores, 0, policy, min_quality=min_quality, max_cost=max_cost, version=version)

    def decide(
        self,
        scores: Scores,
        row: int,
        policy=None,
        *,
        allowed: Sequence[str] | None = None,
        min_quality: float | None = None,
        max_cost: float | None = None,
        version: str | None = None,
    ) -> Decision:
        """The decision for prompt ``row`` of ``scores`` (``route()`` is ``score`` then this).

        A server scores the prompts that arrive together in one ``score`` call and
        decides each here; ``allowed`` then narrows the scored models, exactly as
        ``route(..., allowed=...)`` would have (same candidates, same order).
        """
        default = policy is None
        policy = policy or self.policy_
        if allowed is None:
            models = scores.models
            p, cost, out = scores.p[row], scores.cost[row], scores.output_tokens[row]
        else:
            unknown = [m for m in allowed if m not in self.models_]
            if unknown:
                raise RoutingError(f"model(s) {unknown} are not known to this router; it knows {self.models_}")
            position = {m: k for k, m in enumerate(scores.models)}
            cols = [position[m] for m in allowed if m in position]
            if not cols:
                raise RoutingError("no candidate model: none of the requested models has a price")
            models = [scores.models[k] for k in cols]
            p, cost, out = scores.p[row, cols], scores.cost[row, cols], scores.output_tokens[row, cols]
        mask = np.ones_like(p, dtype=bool)
        if min_quality is not None:
            mask &= p >= min_quality
        if max_cost is not None:
            mask &= cost <= max_cost
        fallback = False
        if not mask.any():
            mask, fallback = np.ones_like(p, dtype=bool), True
        idx, fb = policy.choose(p[None], cost[None], mask[None], models)
        chosen = int(idx[0])
        novelty = None if scores.novelty is None else float(scores.novelty[row])
        guarded = False
        if default and novelty is not None:
            safe = self._novelty_guard(novelty, models)
            if safe is not None and mask[safe] and safe != chosen:
                chosen, guarded = safe, True
        acceptable = policy.acceptable(p, cost, mask)
        order = policy.rank(p, cost, mask)
        order = [chosen] + [j for j in order if j != chosen]
        # Python floats and bools once (exactly the values float()/bool() of each element give)
        p_, cost_, out_, ok_ = p.tolist(), cost.tolist(), out.tolist(), acceptable.tolist()
        input_tokens = float(scores.input_tokens[row])
        candidates = tuple(
            Candidate(models[j], p_[j], input_tokens, out_[j], cost_[j], ok_[j]) for j in order
        )
        return Decision(
            model=models[chosen],
            candidates=candidates,
            policy=policy.name,
            knob=float(policy.knob),
            fallback=fallback or (bool(fb[0]) and not guarded),
            router_version=version,
            novelty=novelty,
            guarded=guarded,
        )

    def _novelty_guard(self, novelty: float, models: Sequence[str]) -> int | None:
        """Column of the certificate's safe model when it sends a prompt this novel there, else None."""
        cert = getattr(self, "certificate_", None)
        if cert is None or cert.novelty_cut is None or not novelty > cert.novelty_cut:
            return None
        try:
            return list(models).index(cert.guard_model)
        except ValueError:  # the best model is not a candidate of this request
            return None

    def default_choice(self, scores: Scores) -> np.ndarray:
        """The model (column of ``scores``) the default policy chooses for every prompt: ``decide(...).model`` for all rows at once."""
        choice, _ = self.policy_.choose(scores.p, scores.cost, None, scores.models)
        cert = getattr(self, "certificate_", None)
        if scores.novelty is not None and cert is not None and cert.novelty_cut is not None and cert.guard_model in scores.models:
            choice = np.where(scores.novelty > cert.novelty_cut, scores.models.index(cert.guard_model), choice)
        return choice
