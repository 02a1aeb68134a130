"""What a registered router shows MLflow tooling: signature, example, batched predict, environment.

``mlflow models serve``, ``mlflow models predict`` and ``mlflow.pyfunc`` see
the router through :class:`router.persist.RouterModel`, whose ``predict`` is
:func:`predict_frame`:

* input: a frame with a ``prompt`` column (one routing decision per row);
* params (all optional): ``policy`` and ``knob`` (default: the router's own),
  or ``profile`` (a profile saved by ``thrifty tune`` under THRIFTY_HOME);
  ``allowed_models``; ``min_quality`` and ``max_cost`` (USD per request);
  ``prices``, a JSON object ``{"model": [input, output USD per 1M tokens]}``
  overriding the training-time prices;
* output: per row the chosen ``model``, its ``p_success`` and
  ``expected_cost``, ``fallback``, ``policy`` and ``knob``, and for every
  model the router knows ``p_success:<model>`` and ``expected_cost:<model>``
  (NaN for a model the request did not allow).

All prompts of a call are scored in one :meth:`Router.score` call and
decided together (the policy's choice over the whole matrix, as
:meth:`Router.decide` makes it for one row). The environment is the project's own ``models`` and
``router`` packages logged as code (they are not on any package index) and
the distributions that code imports, pinned to the installed versions — so
MLflow can rebuild it from the logged artifacts alone.
"""

from __future__ import annotations

import dis
import importlib
import json
import math
import sys
import types
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from models.prices import PriceTable
from router.policy import POLICIES, make_policy
from router.router import Router

# The project's packages a registered router needs at load time, logged as code.
CODE_PACKAGES = ("models", "router")
PROMPT = "prompt"
INPUT_EXAMPLE = [
    "What is the capital of France?",
    "Prove that there are infinitely many primes, rigorously.",
]


class ModelParamsError(ValueError):
    """A predict parameter is invalid; the message names the parameter."""


class IncompleteEnvironmentError(RuntimeError):
    """The logged code imports a module no installed distribution provides."""


def p_column(model: str) -> str:
    return f"p_success:{model}"


def cost_column(model: str) -> str:
    return f"expected_cost:{model}"


# --------------------------------------------------------------------------- predict


def predict_frame(router: Router, model_input: Any, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Decisions for every prompt of ``model_input`` (see the module docstring)."""
    texts = _prompts(model_input)
    params = dict(params or {})
    policy, allowed = _policy_and_allowed(router, params)
    prices = _prices(router, params.get("prices"))
    min_quality = _optional_float(params, "min_quality")
    max_cost = _optional_float(params, "max_cost")
    columns = {m: k for k, m in enumerate(router.models_)}
    n, m = len(texts), len(router.models_)
    p_all = np.full((n, m), np.nan)
    cost_all = np.full((n, m), np.nan)
    frame = pd.DataFrame({"model": pd.Series([], dtype="object"), "p_success": [], "expected_cost": [],
                          "fallback": pd.Series([], dtype="bool"), "policy": pd.Series([], dtype="object"), "knob": []})
    if n:
        from router.router import RoutingError

        try:
            scores = router.score(texts, prices, allowed)
        except RoutingError as exc:
            raise ModelParamsError(str(exc)) from None
        chosen, fallback = _choose(scores.p, scores.cost, scores.models, policy or router.policy_, min_quality, max_cost)
        rows = np.arange(n)
        cols = [columns[name] for name in scores.models]
        p_all[:, cols] = scores.p
        cost_all[:, cols] = scores.cost
        frame = pd.DataFrame({
            "model": np.asarray(scores.models, dtype=object)[chosen],
            "p_success": scores.p[rows, chosen],
            "expected_cost": scores.cost[rows, chosen],
            "fallback": fallback,
            "policy": (policy or router.policy_).name,
            "knob": float((policy or router.policy_).knob),
        })
    per_model = {}
    for name, k in columns.items():
        per_model[p_column(name)] = p_all[:, k]
        per_model[cost_column(name)] = cost_all[:, k]
    return pd.concat([frame, pd.DataFrame(per_model)], axis=1)


def _choose(p, cost, models, policy, min_quality, max_cost):
    """Chosen column and fallback flag per row: :meth:`Router.decide` on all rows at once."""
    mask = np.ones_like(p, dtype=bool)
    if min_quality is not None:
        mask &= p >= min_quality
    if max_cost is not None:
        mask &= cost <= max_cost
    unmet = ~mask.any(axis=1)  # nothing meets the bounds: the policy chooses among all, as a fallback
    mask[unmet] = True
    chosen, policy_fallback = policy.choose(p, cost, mask, models)
    return np.asarray(chosen, dtype=int), np.asarray(policy_fallback, dtype=bool) | unmet


def _prompts(model_input: Any) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        if PROMPT not in model_input.columns:
            raise ModelParamsError(f"input has no {PROMPT!r} column (columns: {list(model_input.columns)})")
        column = model_input[PROMPT]
    elif isinstance(model_input, (list, tuple, np.ndarray, pd.Series)):
        column = pd.Series(list(model_input))
    elif isinstance(model_input, Mapping) and PROMPT in model_input:
        value = model_input[PROMPT]
        column = pd.Series([value] if isinstance(value, str) else list(value))
    else:
        raise ModelParamsError(f"input must be a frame with a {PROMPT!r} column, got {type(model_input).__name__}")
    missing = column.isna().to_numpy()
    if missing.any():
        raise ModelParamsError(f"input row {int(np.flatnonzero(missing)[0])}: {PROMPT!r} is missing")
    return [str(v) for v in column]


def _optional_float(params: Mapping[str, Any], name: str) -> float | None:
    value = params.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ModelParamsError(f"param {name!r} is not a number: {value!r}") from None
    if math.isnan(number):
        return None
    if math.isinf(number) or number < 0:
        raise ModelParamsError(f"param {name!r} must be a finite number >= 0, got {value!r}")
    return number


def _policy_and_allowed(router: Router, params: Mapping[str, Any]):
    allowed = params.get("allowed_models")
    if allowed is not None:
        if isinstance(allowed, str):
            allowed = [allowed]
        allowed = [str(m) for m in allowed] or None
    profile_name = params.get("profile")
    name, knob = params.get("policy"), _optional_float(params, "knob")
    if profile_name:
        if name or knob is not None:
            raise ModelParamsError("param 'profile' sets the policy and knob: give it without 'policy' and 'knob'")
        profile = _load_profile(str(profile_name))
        policy = profile.make_policy()
        if profile.allowed:
            allowed = [m for m in profile.allowed if allowed is None or m in allowed] or None
            if allowed is None:
                raise ModelParamsError(f"param 'allowed_models' leaves none of profile {profile_name!r}'s models")
        return policy, allowed
    if name and str(name) not in POLICIES:
        raise ModelParamsError(f"param 'policy' is {name!r}; expected one of {sorted(POLICIES)}")
    name = str(name) if name else router.policy_.name
    if knob is None:
        if name != router.policy_.name:
            raise ModelParamsError(f"param 'knob' is needed with policy {name!r}")
        return router.policy_, allowed
    return make_policy(name, knob), allowed


def _load_profile(name: str):
    from models.settings import get_settings
    from router.profiles import ProfileError, load_profiles

    directory = get_settings().profiles_dir
    try:
        profiles = load_profiles(directory)
    except ProfileError as exc:
        raise ModelParamsError(str(exc)) from None
    if name not in profiles:
        raise ModelParamsError(f"param 'profile': no profile {name!r} in {directory} (found: {sorted(profiles) or 'none'})")
    return profiles[name]


def _prices(router: Router, value: Any) -> PriceTable:
    if value in (None, ""):
        return router.prices_
    try:
        data = json.loads(value) if isinstance(value, str) else value
        table = PriceTable.from_dict(data)
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
        raise ModelParamsError(
            "param 'prices' must be a JSON object {\"model\": [input_usd_per_mtok, output_usd_per_mtok]}"
        ) from None
    for model, price in table.prices.items():
        for value_ in (price.input_usd_per_mtok, price.output_usd_per_mtok):
            if not math.isfinite(value_) or value_ < 0:
                raise ModelParamsError(f"param 'prices': price of {model!r} must be finite and >= 0")
    return router.prices_.merged(table)


# --------------------------------------------------------------------------- signature


def signature(router: Router):
    """Input, output and params schema of a router's pyfunc model."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    outputs = [
        ColSpec("string", "model"),
        ColSpec("double", "p_success"),
        ColSpec("double", "expected_cost"),
        ColSpec("boolean", "fallback"),
        ColSpec("string", "policy"),
        ColSpec("double", "knob"),
    ]
    for model in router.models_:
        outputs += [ColSpec("double", p_column(model)), ColSpec("double", cost_column(model))]
    params = ParamSchema(
        [
            ParamSpec("policy", "string", None),
            ParamSpec("knob", "double", None),
            ParamSpec("profile", "string", None),
            ParamSpec("allowed_models", "string", [], (-1,)),
            ParamSpec("min_quality", "double", None),
            ParamSpec("max_cost", "double", None),
            ParamSpec("prices", "string", None),
        ]
    )
    return ModelSignature(inputs=Schema([ColSpec("string", PROMPT)]), outputs=Schema(outputs), params=params)


def input_example() -> pd.DataFrame:
    return pd.DataFrame({PROMPT: INPUT_EXAMPLE})


# --------------------------------------------------------------------------- environment


def code_paths() -> list[str]:
    """Directories of the project packages logged with the model."""
    return [str(Path(importlib.import_module(name).__file__).parent) for name in CODE_PACKAGES]


def imported_modules(paths: list[str] | None = None) -> set[str]:
    """Top-level modules imported anywhere in the code under ``paths`` (stdlib and the code's own packages left out).

    Read from the compiled bytecode's import instructions rather than from
    ``ast`` trees: CPython 3.11's AST constructor can fail spuriously
    ("recursion depth mismatch", python/cpython#106905).
    """
    paths = paths or code_paths()
    own = {Path(p).name for p in paths}
    found: set[str] = set()
    for root in paths:
        for file in sorted(Path(root).rglob("*.py")):
            found.update(_absolute_imports(compile(file.read_text(), str(file), "exec")))
    return {m for m in found if m and m not in own and m not in sys.stdlib_module_names and m != "__future__"}


def _absolute_imports(code) -> set[str]:
    names = set()
    instructions = list(dis.get_instructions(code))
    for i, ins in enumerate(instructions):
        # IMPORT_NAME follows LOAD_CONST level, LOAD_CONST fromlist; level 0 is an absolute import
        if ins.opname == "IMPORT_NAME" and i >= 2 and instructions[i - 2].argval == 0:
            names.add(ins.argval.split(".")[0])
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _absolute_imports(const)
    return names


@lru_cache(maxsize=1)
def _module_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def code_requirements(paths: list[str] | None = None) -> list[str]:
    """``dist==version`` for every distribution providing a module the logged code imports.

    Raises :class:`IncompleteEnvironmentError` naming a module that no installed
    distribution provides: such a model's environment could not be rebuilt.
    """
    providers = _module_distributions()
    pins: dict[str, str] = {}
    for module in sorted(imported_modules(paths)):
        dists = providers.get(module)
        if not dists:
            raise IncompleteEnvironmentError(
                f"the code logged with the router imports {module!r}, which no installed distribution provides"
            )
        for dist in dists:
            pins[metadata.metadata(dist)["Name"]] = metadata.version(dist)
    return [f"{name}=={version}" for name, version in sorted(pins.items(), key=lambda kv: kv[0].lower())]
