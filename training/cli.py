"""Training subcommands of ``thrifty``: train, replay, tune, retrain, promote, data."""

from __future__ import annotations

from pathlib import Path

import click

from models.catalog import CatalogError, load_catalog
from models.settings import get_settings


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
@click.option("--predictor", type=click.Choice(["lightgbm", "logistic", "knn"]), default="lightgbm", show_default=True)
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
    from training.fetch import ROUTERBENCH_URL, fetch_routerbench

    cache = Path(cache_dir) if cache_dir else get_settings().cache_dir
    try:
        path = fetch_routerbench(cache, url or ROUTERBENCH_URL, progress=True)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(path))
