"""``thrifty train``: logs in, a registered router with a certified default out."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from models.catalog import Catalog
from router.certificate import Certificate
from router.router import Router
from training import tracking
from training.dataset import OutcomeMatrix, frame_hash, propensity_weights, split_by_prompt
from training.fit import calibration_table, evaluate_router, resolve_prices
from training.logs import read_logs
from training.outputs import write_json
from training.plots import calibration_plot
from training.progress import bar
from training.served import DEFAULT_CONFIDENCE, DEFAULT_PREDICTOR, DEFAULT_TARGET, fit_served_router
from training.targets import Target


@dataclass
class TrainResult:
    router: Router
    metrics: dict[str, dict[str, float]]
    certificate: Certificate
    run_id: str | None = None
    version: str | None = None
    inferred_prices: list[str] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)
    n_rows: int = 0
    n_train: int = 0
    n_test: int = 0

    def summary(self) -> dict[str, float]:
        def mean(key: str) -> float:
            values = np.array([v.get(key, np.nan) for v in self.metrics.values()], dtype=float)
            values = values[np.isfinite(values)]
            return float(values.mean()) if values.size else float("nan")

        return {k: mean(k) for k in ("auc", "brier", "log_loss", "token_log_mae")}


def certificate_metrics(certificate: Certificate) -> dict[str, float]:
    """The certificate's numbers as MLflow metrics (``certificate/...``)."""
    values = {
        "certified": float(certificate.certified),
        "floor": certificate.floor,
        "confidence": certificate.confidence,
        "expected_cost_vs_best": certificate.cost_vs_best,
        "expected_success_vs_best": certificate.success_vs_best,
        "p_value": certificate.p_value,
    }
    return {f"certificate/{k}": float(v) for k, v in values.items() if v is not None and np.isfinite(v)}


def write_outputs(out_dir: Path, router: Router, test: OutcomeMatrix, metrics: dict, certificate: Certificate) -> dict[str, Path]:
    """calibration.png, metrics.json, certificate.json and prices.json in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "calibration": out_dir / "calibration.png",
        "metrics": out_dir / "metrics.json",
        "certificate": out_dir / "certificate.json",
        "prices": out_dir / "prices.json",
    }
    calibration_plot(calibration_table(router, test), paths["calibration"], f"calibration on {test.n_prompts} held-out prompts")
    write_json(paths["metrics"], metrics)
    write_json(paths["certificate"], certificate.to_dict())
    write_json(paths["prices"], router.prices_.to_dict())
    return paths


def train(
    log_paths: Sequence[str | Path],
    catalog: Catalog,
    *,
    predictor: str = DEFAULT_PREDICTOR,
    target: Target = DEFAULT_TARGET,
    confidence: float = DEFAULT_CONFIDENCE,
    test_size: float = 0.2,
    seed: int = 0,
    experiment: str = "thrifty",
    name: str = "thrifty",
    register: bool = True,
    alias: str = tracking.CHAMPION,
    propensity_clip: float = 20.0,
    select_prompts: int = 3000,
    out_dir: Path | None = None,
    progress: bool = False,
    echo=lambda msg: None,
    dask_client=None,
) -> TrainResult:
    """Read logs, fit on a split by prompt, certify the served default, measure on the rest, log and register in MLflow.

    ``out_dir``: also write the plots and JSON outputs there (they always go to the MLflow run).
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
        # The served default (what `model: thrifty` gets) is certified on cross-fitted
        # predictions of the training prompts only; the held-out part stays untouched.
        router, certificate = fit_served_router(
            matrix.subset(train_idx), prices, predictor=predictor, seed=seed, propensity_clip=propensity_clip,
            max_select_prompts=select_prompts, target=target, confidence=confidence, fit=fit,
        )
        steps.update(1)
        test = matrix.subset(test_idx)
        metrics = evaluate_router(router, test)
        steps.update(1)
        result = TrainResult(router, metrics, certificate, inferred_prices=inferred, n_rows=len(frame), n_train=len(train_idx), n_test=len(test_idx))
        if out_dir is not None:
            result.outputs = write_outputs(Path(out_dir), router, test, metrics, certificate)
        if register:
            params = {
                "logs": ",".join(str(p) for p in log_paths)[:500],
                "rows": len(frame),
                "prompts": matrix.n_prompts,
                "models": len(matrix.models),
                "predictor": predictor,
                "test_size": test_size,
                "seed": seed,
                "target": target.describe(),
                "confidence": confidence,
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
                mlflow.log_metrics(certificate_metrics(certificate))
                mlflow.set_tags({"certificate": certificate.describe()[:5000]})
                if result.outputs:
                    mlflow.log_artifacts(str(out_dir))
                else:
                    with tempfile.TemporaryDirectory() as tmp:
                        write_outputs(Path(tmp), router, test, metrics, certificate)
                        mlflow.log_artifacts(tmp)
                steps.update(1)
                result.run_id = run.info.run_id
                result.version = tracking.register_router(
                    router, name, alias=alias,
                    tags={"data_sha256": params["data_sha256"], "predictor": predictor, "certified": certificate.certified,
                          "certificate": certificate.describe()[:5000]},
                )
        steps.update(steps.total - steps.n)
        return result
