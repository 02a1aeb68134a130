"""Training subcommands of ``thrifty``: train, replay, tune, retrain, promote, data."""

from __future__ import annotations

from pathlib import Path

import click

from models.catalog import CatalogError, load_catalog
from models.settings import get_settings
from training.replay_cli import replay, tune  # noqa: F401  (subcommands of `thrifty`)


def _catalog(prices: tuple[str, ...], catalogs: tuple[str, ...]):
    try:
        return load_catalog([*get_settings().catalog, *catalogs, *prices])
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from None


def _log_paths(logs: tuple[str, ...]) -> list[Path]:
    if logs:
        return [Path(p) for p in logs]
    raise click.UsageError("give at least one --logs FILE (or run `thrifty data fetch routerbench`)")


logs_option = click.option("--logs", "logs", multiple=True, type=click.Path(exists=True, dir_okay=False), help="outcome log file(s): .parquet, .jsonl, .csv, or RouterBench .pkl/.csv (repeatable)")
prices_option = click.option("--prices", "prices", multiple=True, type=click.Path(exists=True, dir_okay=False), help="prices CSV (schema of shared/data/prices.csv) loaded as catalog entries")
catalog_option = click.option("--catalog", "catalogs", multiple=True, type=click.Path(exists=True, dir_okay=False), help="catalog file(s) extending or overriding the shipped catalog")
seed_option = click.option("--seed", default=0, show_default=True, help="random seed of splits and learners")


@click.command()
@logs_option
@prices_option
@catalog_option
@click.option("--predictor", type=click.Choice(["lightgbm", "logistic", "knn", "ensemble"]), default="lightgbm", show_default=True)
@click.option("--test-size", default=0.2, show_default=True, help="share of prompts held out for the metrics")
@seed_option
@click.option("--experiment", default=None, help="MLflow experiment (default: THRIFTY_EXPERIMENT or 'thrifty')")
@click.option("--name", default=None, help="registered model name (default: THRIFTY_REGISTRY_NAME or 'thrifty')")
@click.option("--no-register", is_flag=True, help="fit and measure only; log nothing to MLflow")
def train(logs, prices, catalogs, predictor, test_size, seed, experiment, name, no_register):
    """Learn the cheapest model that still succeeds from outcome logs; register it as champion."""
    from training.logs import LogError
    from training.train import train as run_train

    settings = get_settings()
    try:
        result = run_train(
            _log_paths(logs),
            _catalog(prices, catalogs),
            predictor=predictor,
            test_size=test_size,
            seed=seed,
            experiment=experiment or settings.experiment,
            name=name or settings.registry_name,
            register=not no_register,
            progress=True,
            echo=lambda m: click.echo(m, err=True),
        )
    except (LogError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _print_training(result, name or settings.registry_name)


def _print_training(result, name: str) -> None:
    click.echo(f"\ntrained on {result.n_train} prompts, measured on {result.n_test} held-out prompts ({result.n_rows} outcome rows)")
    header = f"{'model':<44} {'n':>6} {'success':>8} {'mean p':>7} {'AUC':>6} {'Brier':>6} {'tok err':>8} {'$/1M in':>8} {'$/1M out':>8}"
    click.echo(header)
    click.echo("-" * len(header))
    prices = result.router.prices_
    for model, m in sorted(result.metrics.items(), key=lambda kv: -kv[1].get("success_rate", 0)):
        pr = prices[model]
        click.echo(
            f"{model[:44]:<44} {int(m['n']):>6} {m['success_rate']:>8.3f} {m.get('mean_p', float('nan')):>7.3f} "
            f"{m.get('auc', float('nan')):>6.3f} {m.get('brier', float('nan')):>6.3f} {m.get('token_log_mae', float('nan')):>8.3f} "
            f"{pr.input_usd_per_mtok:>8.3f} {pr.output_usd_per_mtok:>8.3f}"
        )
    s = result.summary()
    click.echo(f"mean AUC {s['auc']:.3f}  Brier {s['brier']:.4f}  log loss {s['log_loss']:.4f}  token log-MAE {s['token_log_mae']:.3f}")
    sel = result.selection
    if sel.get("policy"):
        click.echo(f"served policy: {sel['policy']} knob {sel['knob']:.6g} (chosen on out-of-fold predictions of the training prompts)")
    if result.version:
        click.echo(f"registered models:/{name}/{result.version} as models:/{name}@champion (run {result.run_id})")


@click.group()
def data():
    """Public outcome logs to start from."""


@data.command("fetch")
@click.argument("dataset", type=click.Choice(["routerbench"]))
@click.option("--url", default=None, help="override the download URL (a mirror, or a local server)")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None, help="default: THRIFTY_HOME/cache")
def data_fetch(dataset, url, cache_dir):
    """Download a public log (resumable, with a progress bar) and convert it to the canonical format."""
    from training.fetch import ROUTERBENCH_URL, DownloadError, fetch_routerbench
    from training.logs import LogError

    cache = Path(cache_dir) if cache_dir else get_settings().cache_dir
    try:
        path = fetch_routerbench(cache, url or ROUTERBENCH_URL, progress=True)
    except (DownloadError, LogError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(path))


@click.command()
@logs_option
@click.option("--store", type=click.Path(exists=True, dir_okay=False), default=None, help="a serving outcome store (SQLite); its decisions joined with feedback are exported and used")
@click.option("--benchmark-logs", "benchmark_logs", multiple=True, type=click.Path(exists=True, dir_okay=False), help="full-matrix benchmark logs to mix in (repeatable)")
@prices_option
@catalog_option
@click.option("--predictor", type=click.Choice(["lightgbm", "logistic", "knn", "ensemble"]), default="lightgbm", show_default=True)
@click.option("--propensity-clip", default=20.0, show_default=True, help="largest inverse-propensity weight")
@click.option("--test-size", default=0.2, show_default=True)
@seed_option
@click.option("--experiment", default=None)
@click.option("--name", default=None)
def retrain(logs, store, benchmark_logs, prices, catalogs, predictor, propensity_clip, test_size, seed, experiment, name):
    """Retrain on served traffic (propensity-weighted), optionally mixed with benchmark logs; register as challenger."""
    import subprocess
    import sys
    import tempfile

    from training.logs import LogError
    from training.tracking import CHALLENGER
    from training.train import train as run_train

    settings = get_settings()
    paths = [Path(p) for p in (*logs, *benchmark_logs)]
    with tempfile.TemporaryDirectory() as tmp:
        if store:
            # Served logs reach training through storage: the serving CLI exports
            # the store to a file in the canonical format, training reads the file.
            exported = Path(tmp) / "served.parquet"
            proc = subprocess.run(
                [sys.executable, "-m", "thrifty.cli", "logs", "export", "--store", store, "--out", str(exported)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise click.ClickException(f"exporting {store} failed: {proc.stderr.strip() or proc.stdout.strip()}")
            paths.append(exported)
        if not paths:
            raise click.UsageError("give --logs (exported served logs), --store, and/or --benchmark-logs")
        try:
            result = run_train(
                paths,
                _catalog(prices, catalogs),
                predictor=predictor,
                test_size=test_size,
                seed=seed,
                experiment=experiment or settings.experiment,
                name=name or settings.registry_name,
                alias=CHALLENGER,
                propensity_clip=propensity_clip,
                progress=True,
                echo=lambda m: click.echo(m, err=True),
            )
        except (LogError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    reg = name or settings.registry_name
    click.echo(f"registered models:/{reg}/{result.version} as models:/{reg}@challenger (run {result.run_id}); "
               f"mean AUC on held-out prompts {result.summary()['auc']:.3f}")


@click.command()
@logs_option
@prices_option
@catalog_option
@click.option("--name", default=None, help="registered model name")
@click.option("--margin", default=0.0, show_default=True, help="how much the challenger's net value per request must exceed the champion's")
@click.option("--usd-per-success", default=0.01, show_default=True, help="what one success is worth: net value = success - cost / this")
@click.option("--estimator", type=click.Choice(["dr", "snips", "ips"]), default="dr", show_default=True, help="off-policy estimator for served (partial) logs")
@click.option("--experiment", default=None)
def promote(logs, prices, catalogs, name, margin, usd_per_success, estimator, experiment):
    """Replay champion and challenger on the same held-out logs; promote the challenger if it wins by the margin."""
    import json

    import mlflow
    from mlflow import MlflowClient

    from router.persist import load_router
    from training import tracking
    from training.dataset import OutcomeMatrix
    from training.logs import LogError, read_logs
    from training.promote import compare

    settings = get_settings()
    reg = name or settings.registry_name
    catalog = _catalog(prices, catalogs)
    tracking.configure(settings)
    client = MlflowClient()
    try:
        champ_v = client.get_model_version_by_alias(reg, tracking.CHAMPION)
        chall_v = client.get_model_version_by_alias(reg, tracking.CHALLENGER)
    except mlflow.exceptions.MlflowException as exc:
        raise click.ClickException(f"registered model {reg!r} needs both a champion and a challenger: {exc}") from None
    champion = load_router(tracking.model_uri(reg, tracking.CHAMPION))
    challenger = load_router(tracking.model_uri(reg, tracking.CHALLENGER))
    try:
        frame = read_logs(_log_paths(logs), catalog.prices())
        matrix = OutcomeMatrix.from_frame(frame)
        table = champion.prices_.merged(challenger.prices_).merged(catalog.prices())
        decision = compare(champion, challenger, matrix, table, margin=margin, usd_per_success=usd_per_success, estimator=estimator)
    except (LogError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    with tracking.start_run(experiment or settings.experiment, run_name="promote"):
        mlflow.log_params({"name": reg, "champion_version": champ_v.version, "challenger_version": chall_v.version,
                           "margin": margin, "usd_per_success": usd_per_success, "method": decision.champion.method,
                           "logs": ",".join(logs)[:500], "promoted": decision.promote})
        for role, v in (("champion", decision.champion), ("challenger", decision.challenger)):
            mlflow.log_metrics({f"{role}/success": v.success, f"{role}/cost": v.cost, f"{role}/value": v.value})
        mlflow.log_text(json.dumps(decision.to_dict(), indent=2), "promotion.json")
    if decision.promote:
        client.set_registered_model_alias(reg, tracking.CHAMPION, str(chall_v.version))
    a, b = decision.champion, decision.challenger
    click.echo(f"champion   v{champ_v.version}: success {a.success:.4f}  cost ${a.cost:.6f}  value {a.value:.4f}  ({a.method})")
    click.echo(f"challenger v{chall_v.version}: success {b.success:.4f}  cost ${b.cost:.6f}  value {b.value:.4f}  ({b.method})")
    verdict = "promoted: challenger is now champion" if decision.promote else f"kept champion (challenger must win by more than {margin})"
    click.echo(verdict)
