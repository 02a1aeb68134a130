"""Cascades: ask cheap models first, check the answer, escalate only when the check fails.

A :class:`Cascade` is data — an ordered list of :class:`Stage` (the models a
stage calls in parallel, and the acceptance test that decides whether to
return the stage's answer or go on), the kind of answer the models give, and
a name — plus pure functions over the answers so far. Nothing here calls a
model or reads a file: serving runs the stages and asks :meth:`Cascade.decide`
after each one; replay (``training.cascades``) evaluates the very same tests on
logged answers, many prompts at once.

Conventions (stated once, used by serving and replay alike):

* **Answers** are compared after normalisation (:mod:`router.answers`, the
  cascade's ``answer_kind``): two models *agree* when their normalised answers
  are equal. An answer *passes the format check* when it is not empty, not a
  refusal and normalises as the kind.
* **A stage's candidate answer**: the most common normalised answer among
  the stage's own models (answers failing the format check do not count); ties
  go to the model listed later in the stage (stages list cheaper models
  first). With no valid answer in the stage, its last model's. The candidate's
  *support* is the number of models called so far, in any stage, whose answer
  equals it (0 when the candidate fails the format check).
* **Acceptance**: each test maps what it sees (:class:`AnswerView`) to a
  score, and accepts where ``score >= threshold``. The last stage always
  answers, whatever its test says.
* **Router predictions** ``p`` (predicted success per model, from the router
  that scored the prompt) are optional; tests that need them see NaN without
  them and do not accept.
* **Gates**: a stage with ``enter > 0`` is called only if the router predicts
  at least that success for one of its models; otherwise the request goes
  straight to the last stage. :meth:`Cascade.plan` lists the stages a request
  may run, and :meth:`Cascade.worst_case_cost` what a budget must book.

Serving one request (what ``training.cascades.run_cascade`` replays)::

    answers, tokens = {}, {}
    for k in cascade.plan(p):
        for model in cascade.stages[k].models:      # in parallel
            answers[model] = extract_answer(response_text)   # router.answers
            tokens[model] = completion_tokens
        verdict = cascade.decide(k, answers, p, tokens)
        if verdict.accept:
            return the response of verdict.model
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar, Mapping, Sequence

import numpy as np

from router.answers import KINDS, get_normalizer, passes_format

NO_ANSWER = -1


class CascadeError(ValueError):
    """A cascade definition (or a profile holding one) is invalid; the message names what and where."""


class UnknownAcceptanceTestError(KeyError):
    """An acceptance test name that is not registered."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown acceptance test {self.name!r}; expected one of {sorted(ACCEPTANCE_TESTS)}"


# ----------------------------------------------------------------------------- what a test sees


@dataclass(frozen=True)
class AnswerView:
    """The answers after one stage, for ``r`` requests at once (one row per request).

    ``called`` lists the models called so far in call order; the columns of
    ``codes``, ``valid`` and ``p`` follow it. Equal non-negative codes in a row
    mean equal normalised answers; ``NO_ANSWER`` (-1) means no valid answer.
    """

    stage: int
    called: tuple[str, ...]
    stage_columns: tuple[int, ...]  # the current stage's models, as columns of ``called``
    codes: np.ndarray  # (r, c) int
    valid: np.ndarray  # (r, c) bool: passes the format check
    p: np.ndarray  # (r, c) router-predicted success, NaN when unknown
    tokens: np.ndarray  # (r, c) output tokens of each call (its usage), NaN when unknown
    candidate: np.ndarray  # (r,) column of ``called`` whose answer the stage would return
    support: np.ndarray  # (r,) models called so far that agree with the candidate

    @property
    def rows(self) -> np.ndarray:
        return np.arange(len(self.candidate))

    @property
    def candidate_p(self) -> np.ndarray:
        return self.p[self.rows, self.candidate]

    @property
    def candidate_valid(self) -> np.ndarray:
        return self.valid[self.rows, self.candidate]


def answer_view(stage: int, called: Sequence[str], stage_columns: Sequence[int], codes, valid, p=None, tokens=None) -> AnswerView:
    """The view of stage ``stage``: candidate answer and support per row (see the module conventions)."""
    codes = np.asarray(codes, dtype=np.int64)
    valid = np.asarray(valid, dtype=bool)
    r, c = codes.shape
    p = np.full((r, c), np.nan) if p is None else np.asarray(p, dtype=np.float64)
    tokens = np.full((r, c), np.nan) if tokens is None else np.asarray(tokens, dtype=np.float64)
    codes = np.where(valid, codes, NO_ANSWER)  # an answer failing the format check agrees with nothing
    cols = np.asarray(stage_columns, dtype=np.int64)
    answered = codes >= 0
    same = (codes[:, :, None] == codes[:, None, :]) & answered[:, :, None]  # (r, c, c)
    support_all = same.sum(axis=2)  # per column: models agreeing with it (itself included; 0 if no answer)
    in_stage = same[:, cols][:, :, cols].sum(axis=2)  # (r, s) votes within the stage
    # most votes in the stage; ties to the later-listed model (position breaks ties)
    key = in_stage * (len(cols) + 1) + np.arange(len(cols))[None, :]
    pick = cols[np.argmax(key, axis=1)]
    rows = np.arange(r)
    return AnswerView(
        stage=stage,
        called=tuple(called),
        stage_columns=tuple(int(x) for x in cols),
        codes=codes,
        valid=valid,
        p=p,
        tokens=tokens,
        candidate=pick,
        support=support_all[rows, pick],
    )


def answer_codes(normalised: Sequence[Sequence[str | None]]) -> np.ndarray:
    """Integer codes of normalised answers, row by row: equal answers in a row get equal codes, None gets -1."""
    rows = [list(r) for r in normalised]
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), NO_ANSWER, dtype=np.int64)
    for i, row in enumerate(rows):
        seen: dict[str, int] = {}
        for j, value in enumerate(row):
            if value is not None:
                out[i, j] = seen.setdefault(value, len(seen))
    return out


# ----------------------------------------------------------------------------- acceptance tests


class AcceptanceTest:
    """Maps an :class:`AnswerView` to a score per row; accepts where ``score >= threshold``.

    Subclasses are frozen dataclasses registered by ``name`` in
    ``ACCEPTANCE_TESTS``; their fields are their parameters (``to_dict``).
    """

    name: ClassVar[str] = ""
    threshold: float

    def score(self, view: AnswerView) -> np.ndarray:
        raise NotImplementedError

    def accept(self, view: AnswerView) -> np.ndarray:
        return self.score(view) >= self.threshold

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        return {"test": self.name, **_plain(self.params())}

    def describe(self) -> str:
        return self.name


@dataclass(frozen=True)
class Always(AcceptanceTest):
    """Return the stage's answer whatever it is (what the last stage does anyway)."""

    name: ClassVar[str] = "always"
    threshold: float = 0.0

    def score(self, view):
        return np.ones(len(view.candidate))


@dataclass(frozen=True)
class Agreement(AcceptanceTest):
    """At least ``threshold`` of the models called so far (any stage) give the candidate's normalised answer."""

    name: ClassVar[str] = "agree"
    threshold: float = 2.0

    def score(self, view):
        return view.support.astype(np.float64)

    def describe(self):
        return f"agree>={self.threshold:g}"


@dataclass(frozen=True)
class FormatCheck(AcceptanceTest):
    """The candidate answer parses as the cascade's answer kind, is not empty and is not a refusal."""

    name: ClassVar[str] = "format"
    threshold: float = 1.0

    def score(self, view):
        return view.candidate_valid.astype(np.float64)


@dataclass(frozen=True)
class Confidence(AcceptanceTest):
    """The router's predicted success of the answering model is at least ``threshold``
    (and the answer passes the format check; with ``min_support`` > 1, that many models agree with it)."""

    name: ClassVar[str] = "confidence"
    threshold: float = 0.8
    min_support: int = 1

    def score(self, view):
        ok = view.candidate_valid & (view.support >= self.min_support)
        p = view.candidate_p
        return np.where(ok & ~np.isnan(p), p, -np.inf)

    def describe(self):
        extra = f", support>={self.min_support}" if self.min_support > 1 else ""
        return f"p>={self.threshold:.3g}{extra}"


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.nan_to_num(p, nan=0.5), 1e-3, 1 - 1e-3)
    return np.log(q) - np.log1p(-q)


def acceptance_features(view: AnswerView) -> np.ndarray:
    """Features of the candidate answer, one row per request (the layout :class:`Learned` expects).

    Per model called so far, in call order: logit of its predicted success,
    whether its answer equals the candidate's, whether its answer passes the
    format check, log(1 + its output tokens) (long answers are more often
    wrong; 0 when unknown). Then: the candidate's support as a share of the
    models called, the number of distinct valid answers as a share, the
    candidate's format flag and the logit of its predicted success. ``4c + 4``
    columns for ``c`` models called.
    """
    rows = view.rows
    r, c = view.codes.shape
    cand_code = view.codes[rows, view.candidate]
    agree = (view.codes == cand_code[:, None]) & (cand_code[:, None] >= 0)
    distinct = np.array([len(set(row[row >= 0].tolist())) for row in view.codes], dtype=np.float64) if r else np.zeros(0)
    tokens = np.log1p(np.maximum(np.nan_to_num(view.tokens, nan=0.0), 0.0))
    per_model = np.concatenate([_logit(view.p), agree, view.valid, tokens], axis=1).astype(np.float64)
    summary = np.column_stack([view.support / c, distinct / c, view.candidate_valid, _logit(view.candidate_p)])
    return np.concatenate([per_model, summary], axis=1)


def n_acceptance_features(n_called: int) -> int:
    return 4 * n_called + 4


@dataclass(frozen=True)
class Learned(AcceptanceTest):
    """A calibrated logistic model of P(the candidate answer is correct | agreement pattern, router p, format flags).

    ``coef``/``intercept`` act on :func:`acceptance_features` of the stage
    (their length fixes how many models must have been called); the score is
    the modelled probability, accepted at ``threshold``. Fitted on training
    prompts by ``training.cascades``; stored as plain numbers.
    """

    name: ClassVar[str] = "learned"
    threshold: float = 0.9
    coef: tuple[float, ...] = ()
    intercept: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "coef", tuple(float(x) for x in self.coef))

    def score(self, view):
        X = acceptance_features(view)
        if X.shape[1] != len(self.coef):
            raise CascadeError(
                f"learned acceptance test at stage {view.stage + 1}: {len(self.coef)} coefficients for "
                f"{X.shape[1]} features ({len(view.called)} models called); it was fitted for another cascade"
            )
        z = X @ np.asarray(self.coef) + self.intercept
        return 0.5 * (1.0 + np.tanh(0.5 * z))

    def describe(self):
        return f"P(correct)>={self.threshold:.3g}"


ACCEPTANCE_TESTS: dict[str, type[AcceptanceTest]] = {
    cls.name: cls for cls in (Always, Agreement, FormatCheck, Confidence, Learned)
}


def get_acceptance_test(name: str) -> type[AcceptanceTest]:
    try:
        return ACCEPTANCE_TESTS[name]
    except KeyError:
        raise UnknownAcceptanceTestError(name) from None


def acceptance_test_from_dict(data: Mapping, where: str = "acceptance test") -> AcceptanceTest:
    if not isinstance(data, Mapping) or "test" not in data:
        raise CascadeError(f"{where}: expected an object with a 'test' name, got {data!r}")
    params = {k: v for k, v in data.items() if k != "test"}
    try:
        cls = get_acceptance_test(str(data["test"]))
        return cls(**params)
    except UnknownAcceptanceTestError as exc:
        raise CascadeError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CascadeError(f"{where}: invalid parameters {params!r}: {exc}") from None


# ----------------------------------------------------------------------------- cascades


@dataclass(frozen=True)
class Stage:
    """Models called in parallel, and the test their answer must pass for the cascade to stop here.

    ``enter`` (0 = always): the stage is called only if the router predicts at
    least this success for one of its models; otherwise the request goes
    straight to the last stage (the router already says the cheap answer will
    fail). Ignored on the last stage.
    """

    models: tuple[str, ...]
    accept: AcceptanceTest = field(default_factory=Always)
    enter: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "enter", float(self.enter))

    def to_dict(self) -> dict:
        out = {"models": list(self.models), "accept": self.accept.to_dict()}
        if self.enter > 0:
            out["enter"] = self.enter
        return out


@dataclass(frozen=True)
class Verdict:
    """What :meth:`Cascade.decide` concludes after a stage."""

    stage: int  # 0-based
    accept: bool  # return ``answer`` now (always True at the last stage)
    model: str  # the model whose response is returned if accepted
    answer: str | None  # its normalised answer
    support: int
    score: float
    final: bool  # this was the last stage


@dataclass(frozen=True)
class Cascade:
    """An ordered list of stages over one kind of answer. See the module docstring."""

    name: str
    stages: tuple[Stage, ...]
    answer_kind: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise CascadeError(f"cascade {self.name!r}: no stages")
        if self.answer_kind not in KINDS:
            raise CascadeError(f"cascade {self.name!r}: unknown answer kind {self.answer_kind!r}; expected one of {list(KINDS)}")
        seen: set[str] = set()
        for k, stage in enumerate(self.stages):
            if not stage.models:
                raise CascadeError(f"cascade {self.name!r}: stage {k + 1} calls no model")
            repeated = seen.intersection(stage.models) or (len(set(stage.models)) < len(stage.models))
            if repeated:
                raise CascadeError(f"cascade {self.name!r}: stage {k + 1} calls a model called before ({', '.join(stage.models)})")
            seen.update(stage.models)
            if isinstance(stage.accept, Learned) and stage.accept.coef:
                want = n_acceptance_features(len(self.called_through(k)))
                if len(stage.accept.coef) != want:
                    raise CascadeError(
                        f"cascade {self.name!r}: stage {k + 1}'s learned test has {len(stage.accept.coef)} coefficients; "
                        f"{want} expected for {len(self.called_through(k))} models called"
                    )

    # -- structure -----------------------------------------------------
    @property
    def models(self) -> list[str]:
        """Every model the cascade may call, in call order."""
        return [m for stage in self.stages for m in stage.models]

    def called_through(self, stage: int) -> list[str]:
        return [m for s in self.stages[: stage + 1] for m in s.models]

    def enters(self, stage: int, p: Mapping[str, float] | None) -> bool:
        """Whether a request with router predictions ``p`` calls stage ``stage`` (see :class:`Stage`).

        Without a prediction for any of the stage's models a gated stage is skipped.
        """
        gate = self.stages[stage].enter
        if stage == len(self.stages) - 1 or gate <= 0:
            return True
        values = [p.get(m, math.nan) for m in self.stages[stage].models] if p is not None else []
        return any(v >= gate for v in values if v == v)

    def plan(self, p: Mapping[str, float] | None = None) -> list[int]:
        """The stages a request may run, in order: each entered stage until a gate fails, then the last."""
        out = []
        for k in range(len(self.stages) - 1):
            if not self.enters(k, p):
                break
            out.append(k)
        return out + [len(self.stages) - 1]

    def stage_columns(self, stage: int) -> tuple[int, ...]:
        start = len(self.called_through(stage - 1)) if stage > 0 else 0
        return tuple(range(start, start + len(self.stages[stage].models)))

    def worst_case_cost(self, expected_cost: Mapping[str, float], p: Mapping[str, float] | None = None) -> float:
        """The cost if every stage of the plan runs: the sum of its models' expected costs (what a budget must book).

        With ``p`` the plan is the request's (gated stages it will skip are not
        booked); without, every stage.
        """
        stages = self.plan(p) if p is not None else range(len(self.stages))
        models = [m for k in stages for m in self.stages[k].models]
        missing = [m for m in models if m not in expected_cost]
        if missing:
            raise CascadeError(f"cascade {self.name!r}: no expected cost for {missing}")
        return float(sum(expected_cost[m] for m in models))

    def describe(self) -> str:
        parts = []
        for k, stage in enumerate(self.stages):
            models = "+".join(stage.models)
            last = k == len(self.stages) - 1
            gate = f"(p>={stage.enter:.3g}) " if stage.enter > 0 and not last else ""
            test = "" if last else f" [{stage.accept.describe()}]"
            parts.append(gate + models + test)
        return " -> ".join(parts)

    # -- answers -------------------------------------------------------
    def normalise(self, answer: str | None) -> str | None:
        return get_normalizer(self.answer_kind)(answer)

    def passes_format(self, answer: str | None) -> bool:
        return passes_format(answer, self.answer_kind)

    def view(self, stage: int, answers: Sequence[Sequence[str | None]], p=None, tokens=None) -> AnswerView:
        """The view after ``stage`` of raw answers, one row per request, columns in call order."""
        return self._view(stage, self.called_through(stage), self.stage_columns(stage), answers, p, tokens)

    def _view(self, stage, called, stage_columns, answers, p=None, tokens=None) -> AnswerView:
        normalised = [[self.normalise(a) for a in row] for row in answers]
        valid = np.array([[self.passes_format(a) for a in row] for row in answers], dtype=bool).reshape(len(answers), len(called))
        return answer_view(stage, called, stage_columns, answer_codes(normalised).reshape(len(answers), len(called)), valid, p, tokens)

    def decide(
        self,
        stage: int,
        answers: Mapping[str, str | None],
        p: Mapping[str, float] | None = None,
        output_tokens: Mapping[str, float] | None = None,
    ) -> Verdict:
        """After ``stage`` (0-based) has run: return its answer, or go on to the next stage?

        ``answers`` maps every model called so far to its final answer (for a
        whole response, :func:`router.answers.extract_answer` first); a model
        whose call failed maps to None. ``p`` maps models to the router's
        predicted success for this prompt (needed by ``confidence`` and
        ``learned`` tests and by gates); ``output_tokens`` the completion
        tokens each call used (a feature of ``learned`` tests). Serving runs
        the stages of :meth:`plan` in order and stops at the first accepted.
        """
        if not 0 <= stage < len(self.stages):
            raise CascadeError(f"cascade {self.name!r} has {len(self.stages)} stage(s); no stage {stage + 1}")
        final = stage == len(self.stages) - 1
        called = self.called_through(stage)
        if final:  # reached after a gate skipped earlier stages: only their models that ran
            called = [m for m in called if m in answers or m in self.stages[stage].models]
        missing = [m for m in called if m not in answers]
        if missing:
            raise CascadeError(f"cascade {self.name!r}, stage {stage + 1}: no answer given for {missing}")
        row = [answers[m] for m in called]
        probs = None if p is None else np.array([[p.get(m, math.nan) for m in called]], dtype=np.float64)
        tokens = None if output_tokens is None else np.array([[output_tokens.get(m, math.nan) for m in called]], dtype=np.float64)
        own = len(self.stages[stage].models)
        view = self._view(stage, called, tuple(range(len(called) - own, len(called))), [row], probs, tokens)
        score = float(self.stages[stage].accept.score(view)[0])
        accept = final or bool(score >= self.stages[stage].accept.threshold)
        j = int(view.candidate[0])
        return Verdict(stage, accept, called[j], self.normalise(row[j]), int(view.support[0]), score, final)

    # -- storage -------------------------------------------------------
    def to_dict(self) -> dict:
        return {"name": self.name, "answer_kind": self.answer_kind, "stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Cascade":
        if not isinstance(data, Mapping):
            raise CascadeError(f"a cascade is an object with 'name', 'answer_kind' and 'stages', got {type(data).__name__}")
        name = str(data.get("name", "cascade"))
        stages_data = data.get("stages")
        if not isinstance(stages_data, list) or not stages_data:
            raise CascadeError(f"cascade {name!r}: 'stages' must be a non-empty list")
        stages = []
        for k, item in enumerate(stages_data):
            where = f"cascade {name!r}, stage {k + 1}"
            if not isinstance(item, Mapping) or not isinstance(item.get("models"), list) or not all(isinstance(m, str) for m in item["models"]):
                raise CascadeError(f"{where}: expected {{'models': [model ids], 'accept': {{...}}}}, got {item!r}")
            accept = acceptance_test_from_dict(item.get("accept", {"test": "always"}), where)
            enter = item.get("enter", 0.0)
            if not isinstance(enter, (int, float)) or isinstance(enter, bool) or not 0 <= enter <= 1:
                raise CascadeError(f"{where}: 'enter' must be a predicted success in [0, 1], got {enter!r}")
            stages.append(Stage(tuple(item["models"]), accept, float(enter)))
        return cls(name, tuple(stages), str(data.get("answer_kind", "auto")))


def _plain(value):
    """Parameters as JSON-ready Python values (tuples as lists, numpy scalars as floats)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
