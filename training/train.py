"""``thrifty train``: logs in, a registered router out."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from models.catalog import Catalog
from router.router import Router
from training import tracking
from training.dataset import OutcomeMatrix, frame_hash, propensity_weights, split_by_prompt
from training.fit import calibration_table, evaluate_router, resolve_prices
from training.logs import read_logs
from training.plots import calibration_plot
from training.progress import bar
from training.served import fit_served_router


@dataclass
class TrainResult:
    router: Router
    metrics: dict[str, dict[str, float]]
    run_id: str | None = None
    version: str | None = None
    inferred_prices: list[str] = field(default_factory=list)
    selection: dict = field(default_factory=dict)
    n_rows: int = 0
    n_train: int = 0
    n_test: int = 0

    def summary(self) -> dict[str, float]:
        def mean(key: str) -> float:
            values = np.array([v.get(key, np.nan) for v in self.metrics.values()], dtype=float)
            values = values[np.isfinite(values)]
            return float(values.mean()) if values.size else float("nan")

        return {k: mean(k) for k in ("auc", "brier", "log_loss", "token_log_mae")}


def train(
    log_paths: Sequence[str | Path],
    catalog: Catalog,
    *,
    predictor: str = "lightgbm",
    test_size: float = 0.2,
    seed: int = 0,
    experiment: str = "thrifty",
    name: str = "thrifty",
    register: bool = True,
    alias: str = tracking.CHAMPION,
    propensity_clip: float = 20.0,
    select_prompts: int = 3000,
    progress: bool = False,
    echo=lambda msg: None,
    dask_client=None,
) -> TrainResult:
    """Read logs, fit on a split by prompt, measure on the rest, log and register in MLflow.

    With ``dask_client`` (a ``distributed.Client``) the logs are read, the prompts
    featurised and the served router's success booster trained on the cluster's
    workers (see ``training.distributed``); the router is the same kind either way.
    """
    fit = None
    if dask_client is not None:
        from functools import partial

        from training.distributed import fit_router_dask, read_logs_dask

        fit = partial(fit_router_dask, dask_client)
    with bar(total=5, enabled=progress, desc="train", unit="step") as steps:
        if dask_client is None:
            frame = read_logs(log_paths, catalog.prices(), progress=progress)
        else:
            frame = read_logs_dask(dask_client, log_paths, catalog.prices())
        matrix = OutcomeMatrix.from_frame(frame)
        prices, inferred = resolve_prices(matrix, catalog.prices())
        if inferred:
            echo(f"prices implied by logged costs for {len(inferred)} model(s) not in the catalog: {', '.join(inferred)}")
        train_idx, test_idx = split_by_prompt(matrix, test_size, seed)
        steps.update(1)
        steps.set_postfix_str(f"fit {predictor} on {len(train_idx)} prompts x {len(matrix.models)} models")
        weighted = propensity_weights(matrix, propensity_clip) is not None
        if weighted:
            echo(f"logs carry propensities: inverse-propensity weights (clipped at {propensity_clip:g})")
        # The default policy and knob (what `model: thrifty` serves) are chosen by
        # cross-fitting on the training prompts only; the held-out part stays untouched.
        router, selection = fit_served_router(
            matrix.subset(train_idx), prices, predictor=predictor, seed=seed, propensity_clip=propensity_clip, max_select_prompts=select_prompts,
            fit=fit,
        )
        steps.update(1)
        test = matrix.subset(test_idx)
        metrics = evaluate_router(router, test)
        steps.update(1)
        result = TrainResult(router, metrics, inferred_prices=inferred, n_rows=len(frame), n_train=len(train_idx), n_test=len(test_idx),
                             selection=selection.to_dict())
        if register:
            params = {
                "logs": ",".join(str(p) for p in log_paths)[:500],
                "rows": len(frame),
                "prompts": matrix.n_prompts,
                "models": len(matrix.models),
                "predictor": predictor,
                "test_size": test_size,
                "seed": seed,
                "data_sha256": frame_hash(frame),
                "prices_sha256": tracking.prices_hash(prices),
                "catalog_models": len(catalog),
                "inferred_prices": ",".join(inferred)[:500] or "none",
                "train_prompts": len(train_idx),
                "propensity_weighted": weighted,
                "alias": alias,
                "test_prompts": len(test_idx),
                "dask_workers": len(dask_client.scheduler_info()["workers"]) if dask_client is not None else 0,
            }
            with tracking.start_run(experiment, run_name=f"train-{predictor}") as run:
                import mlflow

                mlflow.log_params(params)
                tracking.log_metrics_nested(metrics, prefix="test/")
                mlflow.log_metrics({f"test/mean_{k}": v for k, v in result.summary().items() if np.isfinite(v)})
                with tempfile.TemporaryDirectory() as tmp:
                    tmp = Path(tmp)
                    calibration_plot(calibration_table(router, test), tmp / "calibration.png", f"calibration on {len(test_idx)} held-out prompts")
                    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
                    (tmp / "prices.json").write_text(json.dumps(prices.to_dict(), indent=2))
                    (tmp / "policy_selection.json").write_text(json.dumps(result.selection, indent=2, default=str))
                    mlflow.log_artifacts(str(tmp))
                steps.update(1)
                result.run_id = run.info.run_id
                result.version = tracking.register_router(
                    router, name, alias=alias, tags={"data_sha256": params["data_sha256"], "predictor": predictor}
                )
        steps.update(steps.total - steps.n)
        return result
