"""``thrifty replay`` and ``thrifty tune`` (re-exported by ``training.cli``)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from models.settings import get_settings


def _prices(prices: tuple[str, ...]):
    from models.catalog import CatalogError, load_catalog

    try:
        return load_catalog([*get_settings().catalog, *prices]).prices()
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from None


def _read(logs: tuple[str, ...], prices):
    from training.logs import LogError, read_logs

    if not logs:
        raise click.UsageError("give at least one --logs FILE")
    try:
        return read_logs([Path(p) for p in logs], prices)
    except (LogError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def _load_router(uri: str | None):
    if uri is None:
        return None
    from router.persist import load_router

    try:
        return load_router(uri)
    except Exception as exc:  # noqa: BLE001 - any loading failure is the user's URI
        raise click.ClickException(f"cannot load router {uri!r}: {exc}") from None


logs_option = click.option("--logs", "logs", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False), help="outcome log file(s) where every model answered every prompt (repeatable)")
prices_option = click.option("--prices", "prices", multiple=True, type=click.Path(exists=True, dir_okay=False), help="prices CSV (schema of shared/data/prices.csv); models it lacks are priced from their logged costs")
router_option = click.option("--router", "router_uri", default=None, help="replay this router (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., or a .joblib file) instead of training one")
split_options = [
    click.option("--test-size", default=0.3, show_default=True, help="share of prompts held out for the replay"),
    click.option("--seed", default=0, show_default=True, help="seed of the split and the learners"),
    click.option("--task-holdout", default=None, help="hold out this whole task instead of a random share of prompts"),
]


def _with(options):
    def wrap(f):
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


@click.command()
@logs_option
@prices_option
@router_option
@_with(split_options)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="directory for metrics.json, curve.csv, decisions.parquet and frontier.png")
@click.option("--predictors", default="knn,logistic,lightgbm,ensemble", show_default=True, help="routers to train and replay (comma-separated; ensemble = the mean of the other three) when --router is not given")
@click.option("--knobs", "n_knobs", default=256, show_default=True, help="knob settings per policy sweep (before duplicates are dropped)")
@click.option("--folds", default=3, show_default=True, help="folds of the training split on which each router's default knob is chosen")
@click.option("--experiment", default=None, help="MLflow experiment (default: THRIFTY_EXPERIMENT or 'thrifty')")
@click.option("--no-mlflow", is_flag=True, help="write the outputs only; log nothing to MLflow")
def replay(logs, prices, router_uri, test_size, seed, task_holdout, out_dir, predictors, n_knobs, folds, experiment, no_mlflow):
    """Replay routers and baselines on held-out logged prompts: cost–quality curves, AIQ, gap closed, APGR."""
    from training.replay import PREDICTORS, format_table, log_to_mlflow, run_replay, write_outputs

    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    kinds = [k.strip() for k in predictors.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in PREDICTORS]
    if unknown:
        raise click.UsageError(f"--predictors: unknown {unknown}; choose from {list(PREDICTORS)}")
    table = _prices(prices)
    frame = _read(logs, table)
    router = _load_router(router_uri)
    try:
        result = run_replay(
            frame,
            table,
            router=router,
            test_size=test_size,
            seed=seed,
            task_holdout=task_holdout,
            predictors=kinds,
            n_knobs=n_knobs,
            folds=folds,
            echo=lambda m: click.echo(m, err=True),
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    title = " + ".join(result.meta["datasets"]) + (f" (held-out task {task_holdout})" if task_holdout else f" ({test_size:.0%} test split, seed {seed})")
    paths = write_outputs(result, out_dir, title)
    click.echo(format_table(result))
    click.echo(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    if not no_mlflow:
        settings = get_settings()
        params = {"logs": ",".join(logs), "router": router_uri or "trained", "predictors": ",".join(kinds)}
        run_id = log_to_mlflow(result, paths, experiment or settings.experiment, params)
        click.echo(f"logged to MLflow run {run_id}")


@click.command()
@logs_option
@prices_option
@router_option
@_with(split_options)
@click.option("--name", required=True, help="profile name; serving exposes the profile as this model name")
@click.option("--target-quality", default=None, help="least mean success: absolute (0.8) or a share of the best single model (95%)")
@click.option("--max-cost-per-request", "max_cost", type=float, default=None, help="most mean USD per request")
@click.option("--budget", type=float, default=None, help="USD to spend over --requests requests")
@click.option("--requests", type=int, default=None, help="expected number of requests the --budget must pay for")
@click.option("--policy", type=click.Choice(["threshold", "tradeoff", "any"]), default="any", show_default=True, help="policy whose knob is tuned")
@click.option("--predictor", type=click.Choice(["ensemble", "lightgbm", "logistic", "knn"]), default="ensemble", show_default=True, help="router to train when --router is not given")
@click.option("--z", "z", type=float, default=1.0, show_default=True, help="standard errors by which the chosen setting must meet the target on the validation split")
@click.option("--experiment", default=None, help="MLflow experiment (default: THRIFTY_EXPERIMENT or 'thrifty')")
@click.option("--no-mlflow", is_flag=True, help="log nothing to MLflow")
def tune(logs, prices, router_uri, test_size, seed, task_holdout, name, target_quality, max_cost, budget, requests, policy, predictor, z, experiment, no_mlflow):
    """Choose the knob that meets a quality or cost target on a validation split; save it as a named profile."""
    from router.profiles import ProfileError
    from training.tune import POLICIES, Target, TargetError
    from training.tune import tune as run_tune

    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    try:
        target = Target.parse(target_quality, max_cost, budget, requests)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    table = _prices(prices)
    frame = _read(logs, table)
    router = _load_router(router_uri)
    settings = get_settings()
    try:
        result = run_tune(
            frame,
            table,
            target,
            name,
            router=router,
            router_uri=router_uri,
            profiles_dir=settings.profiles_dir,
            policies=POLICIES if policy == "any" else (policy,),
            predictor=predictor,
            test_size=test_size,
            seed=seed,
            task_holdout=task_holdout,
            z=z,
            echo=lambda m: click.echo(m, err=True),
        )
    except TargetError as exc:
        raise click.ClickException(str(exc)) from None
    except (ProfileError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    p, v, t = result.profile, result.validation, result.test
    click.echo(f"target: {result.target.describe(v['best_single'])}")
    click.echo(f"chosen on {result.n_validation} validation prompts: {p.policy} knob {p.knob:.6g} -> success {v['quality']:.3f}, ${v['cost']:.3g} per request")
    click.echo(
        f"on {result.n_test} test prompts (not used for the choice): success {t['quality']:.3f}, ${t['cost']:.3g} per request "
        f"(best single model {t['best_single']:.3f}) -> target {'met' if t['target_met'] else 'MISSED'} on the test split"
    )
    click.echo(f"saved profile {p.name!r} to {result.path} (router: {p.router_uri})")
    if not no_mlflow:
        import mlflow

        from training import tracking

        with tracking.start_run(experiment or settings.experiment, run_name=f"tune-{name}") as run:
            mlflow.log_params({"logs": ",".join(logs)[:500], "profile": name, "policy": p.policy, "knob": p.knob, "target": result.target.describe(v["best_single"])[:500], "router": str(p.router_uri)[:500]})
            mlflow.log_metrics({"validation/quality": v["quality"], "validation/cost": v["cost"], "test/quality": t["quality"], "test/cost": t["cost"], "test/target_met": float(t["target_met"])})
            mlflow.log_artifact(str(result.path))
        click.echo(f"logged to MLflow run {run.info.run_id}")
