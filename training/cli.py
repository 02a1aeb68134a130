"""Training subcommands of ``thrifty``: train, retrain, promote, replay, tune, data.

Every option two commands share is defined once below, and the inputs they
share (logs, prices and catalogs, a router to load) are read by one helper
each. File options take several values after one flag (``--logs a.parquet
b.parquet``, or a shell glob ``--logs logs/*.parquet``) as well as the flag
repeated (``--logs a --logs b``).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from models.jsonout import json_result
from models.settings import get_settings
from router.predictors import get_predictor, predictor_names
from training.progress import say
from training.served import DEFAULT_PREDICTOR

# -------------------------------------------------------------------------- options


class FileListOption(click.Option):
    """A repeatable file option that also takes several values after one flag."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("multiple", True)
        kwargs.setdefault("type", click.Path(exists=True, dir_okay=False))
        super().__init__(*args, **kwargs)


class Command(click.Command):
    """A command whose :class:`FileListOption` flags take every value up to the next option.

    ``--logs a b --prices p`` is read as ``--logs a --logs b --prices p``. The
    training commands take no positional arguments, so a bare word after such
    a flag can only be one more of its values.
    """

    def parse_args(self, ctx, args):
        flags = {opt for p in self.params if isinstance(p, FileListOption) for opt in p.opts}
        spread, current = [], None
        args = list(args)
        k = 0
        while k < len(args):
            arg = args[k]
            if arg == "--":
                spread.extend(args[k:])
                break
            name = arg.split("=", 1)[0]
            if name in flags:
                current = name
                spread.append(arg)
                if "=" not in arg and k + 1 < len(args):  # the flag's first value, whatever it looks like
                    spread.append(args[k + 1])
                    k += 1
            elif current is not None and not arg.startswith("-"):
                spread.extend([current, arg])
            else:
                current = None
                spread.append(arg)
            k += 1
        return super().parse_args(ctx, spread)


def command(**kw):
    return click.command(cls=Command, **kw)


def _options(*options):
    def wrap(f):
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


LOGS_HELP = (
    "outcome log(s): files (.parquet, .jsonl, .csv, RouterBench .pkl/.csv), directories of Parquet parts, or fsspec URLs "
    "(file://, s3://, gs://); several after one --logs, or --logs repeated"
)
# Not click.Path: directories and URLs are logs too; training.sources checks each one.
logs_option = click.option("--logs", "logs", cls=FileListOption, type=click.STRING, help=LOGS_HELP)
prices_option = click.option(
    "--prices", "prices", cls=FileListOption,
    help="prices CSV(s) (schema of shared/data/prices.csv) loaded as catalog entries; models no table prices are priced from their logged costs",
)
catalog_option = click.option("--catalog", "catalogs", cls=FileListOption, help="catalog file(s) extending or overriding the shipped catalog")
seed_option = click.option("--seed", default=0, show_default=True, help="random seed of splits and learners")
task_holdout_option = click.option("--task-holdout", default=None, help="hold out this whole task instead of a random share of prompts")
experiment_option = click.option("--experiment", default=None, help="MLflow experiment (default: THRIFTY_EXPERIMENT or 'thrifty')")
name_option = click.option("--name", default=None, help="registered model name (default: THRIFTY_REGISTRY_NAME or 'thrifty')")
no_mlflow_option = click.option("--no-mlflow", is_flag=True, help="write the outputs only; log nothing to MLflow")
router_option = click.option(
    "--router", "router_uri", default=None,
    help="use this router (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., or a .joblib file) instead of training one",
)
relative_option = click.option("--relative", is_flag=True, help="read --target-quality as a share of the best single model's success (0.98 = 98%)")
confidence_option = click.option(
    "--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.9, show_default=True,
    help="probability with which the target must hold (certified on cross-fitted predictions of the training prompts)",
)
served_target_option = click.option(
    "--target-quality", default="98%", show_default=True,
    help="what the served default must keep: a share of the best single model's success (98%, or 0.98 with --relative) or an absolute success rate (0.8)",
)


def test_size_option(default: float):
    return click.option("--test-size", default=default, show_default=True, help="share of prompts held out for the metrics")


def predictor_option(default: str):
    return click.option(
        "--predictor", type=click.Choice(predictor_names()), default=default, show_default=True,
        help="success predictor of the router to train",
    )


def _predictor_list(ctx, param, value: str) -> list[str]:
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    for kind in kinds:
        try:
            get_predictor(kind)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return kinds


predictors_option = click.option(
    "--predictors", default=",".join(k for k in predictor_names() if get_predictor(k).replayed), show_default=True,
    callback=_predictor_list,
    help=f"routers to train and replay when --router is not given (comma-separated; any of {', '.join(predictor_names())})",
)

# -------------------------------------------------------------------------- inputs


def _catalog(prices: tuple[str, ...], catalogs: tuple[str, ...]):
    from models.catalog import CatalogError, load_catalog

    try:
        return load_catalog([*get_settings().catalog, *catalogs, *prices])
    except CatalogError as exc:
        raise click.ClickException(str(exc)) from None


def _log_paths(logs: tuple[str, ...]) -> list[str]:
    if logs:
        return list(logs)
    raise click.UsageError("give at least one --logs FILE (or run `thrifty data fetch routerbench`)")


def _read(logs: tuple[str, ...], prices):
    from training.logs import LogError, read_logs

    paths = _log_paths(logs)
    try:
        return read_logs(paths, prices, progress=True)
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


def _quiet_git() -> None:
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def _quality_target(target_quality: str, relative: bool):
    from training.targets import Target

    try:
        return Target.parse(target_quality, relative=relative)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _train_out(out_dir: str | None) -> Path:
    if out_dir:
        return Path(out_dir)
    import time

    return get_settings().home_dir / "runs" / time.strftime("train-%Y%m%d-%H%M%S")


# -------------------------------------------------------------------------- train, retrain


train_out_option = click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), default=None,
    help="directory for calibration.png, metrics.json, certificate.json, prices.json (default: THRIFTY_HOME/runs/train-<time>)",
)


@command()
@_options(logs_option, prices_option, catalog_option, predictor_option(DEFAULT_PREDICTOR), served_target_option, relative_option, confidence_option)
@_options(test_size_option(0.2), seed_option, experiment_option, name_option, train_out_option)
@click.option("--no-register", is_flag=True, help="fit and measure only; log nothing to MLflow")
@click.option(
    "--dask", "dask_address", default=None, metavar="ADDRESS",
    help="read, featurise and fit on a Dask cluster: a scheduler (tcp://host:8786), 'local' or 'local:N' for a LocalCluster of N workers (needs thrifty[dask]; fits the lightgbm predictor)",
)
@click.pass_context
@json_result
def train(ctx, logs, prices, catalogs, predictor, target_quality, relative, confidence, test_size, seed, experiment, name, out_dir, no_register, dask_address):
    """Learn the cheapest model that still succeeds from outcome logs; certify the default; register it as champion."""
    from contextlib import nullcontext

    from training.distributed import DaskError, dask_client
    from training.logs import LogError
    from training.train import train as run_train

    settings = get_settings()
    target = _quality_target(target_quality, relative)
    if dask_address is not None and predictor != "lightgbm":
        if ctx.get_parameter_source("predictor") is not click.core.ParameterSource.DEFAULT:
            raise click.UsageError(f"--dask fits the lightgbm predictor only (got --predictor {predictor})")
        predictor = "lightgbm"  # the default ensemble has no distributed fit
    try:
        with dask_client(dask_address) if dask_address is not None else nullcontext() as client:
            result = run_train(
                _log_paths(logs),
                _catalog(prices, catalogs),
                predictor=predictor,
                target=target,
                confidence=confidence,
                test_size=test_size,
                seed=seed,
                experiment=experiment or settings.experiment,
                name=name or settings.registry_name,
                register=not no_register,
                out_dir=_train_out(out_dir),
                progress=True,
                echo=say,
                dask_client=client,
            )
    except (LogError, ValueError, DaskError) as exc:
        raise click.ClickException(str(exc)) from None
    _print_training(result, name or settings.registry_name)
    return _training_json(result, name or settings.registry_name)


def _training_json(result, name: str) -> dict:
    """``thrifty train --json``: the held-out metrics per model, their means, the served policy and its certificate, the registration."""
    prices = result.router.prices_
    return {
        "command": "train",
        "n_rows": result.n_rows,
        "n_train": result.n_train,
        "n_test": result.n_test,
        "models": {
            model: {**m, "input_usd_per_mtok": prices[model].input_usd_per_mtok,
                    "output_usd_per_mtok": prices[model].output_usd_per_mtok}
            for model, m in result.metrics.items()
        },
        "summary": result.summary(),
        "served_policy": {"policy": result.certificate.policy, "knob": result.certificate.knob},
        "certificate": {k: v for k, v in result.certificate.to_dict().items() if k != "prices"},
        "registered": None if not result.version else {
            "name": name, "version": str(result.version), "uri": f"models:/{name}/{result.version}",
            "alias": "champion", "run_id": result.run_id,
        },
    }


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
    _print_certificate(result.certificate)
    if result.outputs:
        click.echo(f"wrote {', '.join(p.name for p in result.outputs.values())} to {next(iter(result.outputs.values())).parent}")
    if result.version:
        click.echo(f"registered models:/{name}/{result.version} as models:/{name}@champion (run {result.run_id})")


def _print_certificate(cert) -> None:
    if not cert.best_model:  # partial logs: nothing could be replayed
        click.echo(f"served default: {cert.policy} knob {cert.knob:.6g}, not certified ({cert.reason})")
        return
    if cert.certified:
        click.echo(f"served default: {cert.describe()}")
        for name, numbers in cert.evidence.items():
            kind = "prompts of held-out training tasks" if name == "tasks" else "held-out training prompts"
            click.echo(f"  on {kind}: {numbers['success_vs_best']:.3f}x the success, {numbers['cost_vs_best']:.3f}x the cost of {cert.best_model}")
    else:
        click.echo(f"served default: NOT CERTIFIED — {cert.reason}.")
        click.echo(f"  serving the best single model, {cert.best_model} (success {cert.best_success:.3f} on the training prompts); "
                   "lower --target-quality or --confidence, or give more logs, to route")


@command()
@logs_option
@click.option("--store", default=None, help="a serving outcome store (a SQLite file, sqlite:/// or postgresql:// URL); its decisions joined with feedback are used")
@click.option("--benchmark-logs", "benchmark_logs", cls=FileListOption, type=click.STRING, help="full-matrix benchmark logs to mix in (files, directories of parts or URLs, as --logs)")
@_options(prices_option, catalog_option, predictor_option(DEFAULT_PREDICTOR), served_target_option, relative_option, confidence_option)
@click.option("--propensity-clip", default=20.0, show_default=True, help="largest inverse-propensity weight")
@_options(test_size_option(0.2), seed_option, experiment_option, name_option, train_out_option)
def retrain(logs, store, benchmark_logs, prices, catalogs, predictor, target_quality, relative, confidence, propensity_clip, test_size, seed, experiment, name, out_dir):
    """Retrain on served traffic (propensity-weighted), optionally mixed with benchmark logs; register as challenger."""
    import tempfile

    from models.store import StoreError, open_store
    from models.store.outcomes import outcome_frame
    from training.logs import LogError
    from training.tracking import CHALLENGER
    from training.train import train as run_train

    settings = get_settings()
    target = _quality_target(target_quality, relative)
    paths = [*logs, *benchmark_logs]
    with tempfile.TemporaryDirectory() as tmp:
        if store:
            # served traffic through the store's interface, as canonical outcome rows
            try:
                with open_store(store, create=False) as served:
                    frame = outcome_frame(served, cascades=False)
                if frame.attrs["cascades_left_out"]:
                    say(f"left out {frame.attrs['cascades_left_out']} decision(s) of cascade profiles: the answer chose their "
                        "answering model, so their feedback is not a fair label of it")
            except StoreError as exc:
                raise click.ClickException(str(exc)) from None
            exported = Path(tmp) / "served.parquet"
            frame.to_parquet(exported, index=False)
            paths.append(str(exported))
        if not paths:
            raise click.UsageError("give --logs (exported served logs), --store, and/or --benchmark-logs")
        try:
            result = run_train(
                paths,
                _catalog(prices, catalogs),
                predictor=predictor,
                target=target,
                confidence=confidence,
                test_size=test_size,
                seed=seed,
                experiment=experiment or settings.experiment,
                name=name or settings.registry_name,
                out_dir=_train_out(out_dir),
                alias=CHALLENGER,
                propensity_clip=propensity_clip,
                progress=True,
                echo=say,
            )
        except (LogError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    reg = name or settings.registry_name
    _print_certificate(result.certificate)
    click.echo(f"registered models:/{reg}/{result.version} as models:/{reg}@challenger (run {result.run_id}); "
               f"mean AUC on held-out prompts {result.summary()['auc']:.3f}")


# -------------------------------------------------------------------------- promote


@command()
@_options(logs_option, prices_option, catalog_option, name_option)
@click.option("--margin", default=0.0, show_default=True, help="how much the challenger's net value per request must exceed the champion's")
@click.option("--usd-per-success", default=0.01, show_default=True, help="what one success is worth: net value = success - cost / this")
@click.option("--estimator", type=click.Choice(["dr", "snips", "ips"]), default="dr", show_default=True, help="off-policy estimator for served (partial) logs")
@experiment_option
@json_result
def promote(logs, prices, catalogs, name, margin, usd_per_success, estimator, experiment):
    """Replay champion and challenger on the same held-out logs; promote the challenger if it wins by the margin."""
    import json

    import mlflow
    from mlflow import MlflowClient

    from router.persist import load_router
    from training import tracking
    from training.dataset import OutcomeMatrix
    from training.promote import compare

    settings = get_settings()
    reg = name or settings.registry_name
    catalog = _catalog(prices, catalogs)
    store = settings.embedded_store
    if store is not None and not store.is_file():  # looking must not leave an empty store behind
        raise click.ClickException(f"registered model {reg!r} needs a champion and a challenger: nothing is registered yet "
                                   f"(no MLflow store at {store})")
    tracking.configure(settings)
    client = MlflowClient()
    try:
        champ_v = client.get_model_version_by_alias(reg, tracking.CHAMPION)
        chall_v = client.get_model_version_by_alias(reg, tracking.CHALLENGER)
    except mlflow.exceptions.MlflowException as exc:
        raise click.ClickException(f"registered model {reg!r} needs both a champion and a challenger: {exc}") from None
    champion = load_router(tracking.model_uri(reg, tracking.CHAMPION))
    challenger = load_router(tracking.model_uri(reg, tracking.CHALLENGER))
    frame = _read(logs, catalog.prices())
    try:
        matrix = OutcomeMatrix.from_frame(frame)
        table = champion.prices_.merged(challenger.prices_).merged(catalog.prices())
        decision = compare(champion, challenger, matrix, table, margin=margin, usd_per_success=usd_per_success, estimator=estimator)
    except ValueError as exc:
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
    return {
        "command": "promote",
        "name": reg,
        "promoted": bool(decision.promote),
        "margin": margin,
        "usd_per_success": usd_per_success,
        "champion": {"version": str(champ_v.version), **_value_json(a)},
        "challenger": {"version": str(chall_v.version), **_value_json(b)},
        "champion_version_now": str(chall_v.version if decision.promote else champ_v.version),
    }


def _value_json(value) -> dict:
    return {"success": value.success, "cost": value.cost, "value": value.value, "method": value.method}


# -------------------------------------------------------------------------- replay


@command()
@_options(logs_option, prices_option, catalog_option, router_option, test_size_option(0.3), seed_option, task_holdout_option)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="directory for metrics.json, curve.csv, decisions.parquet and frontier.png")
@predictors_option
@click.option("--knobs", "n_knobs", default=256, show_default=True, help="knob settings per policy sweep (before duplicates are dropped)")
@click.option("--folds", default=3, show_default=True, help="folds of the training split on which each router's served default is certified")
@_options(served_target_option, relative_option, confidence_option, experiment_option, no_mlflow_option)
@click.option("--cascades", is_flag=True, help="also search cascades on the training split (logs with parsed answers) and replay them: rows cascade/<family>, cascade_decisions.parquet")
@click.option("--cascade-models", default=8, show_default=True, type=click.IntRange(2, 12), help="with --cascades: at most this many models (on or near the training split's cost-quality hull) to draw stages from")
@json_result
def replay(logs, prices, catalogs, router_uri, test_size, seed, task_holdout, out_dir, predictors, n_knobs, folds, target_quality, relative, confidence, experiment, no_mlflow, cascades, cascade_models):
    """Replay routers and baselines on held-out logged prompts: cost–quality curves, AIQ, gap closed, APGR."""
    from training.replay import format_table, log_to_mlflow, run_replay, write_outputs

    _quiet_git()
    target = _quality_target(target_quality, relative)
    table = _catalog(prices, catalogs).prices()
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
            predictors=predictors,
            n_knobs=n_knobs,
            folds=folds,
            target=target,
            confidence=confidence,
            cascades=cascades,
            cascade_models=cascade_models,
            echo=say,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    title = " + ".join(result.meta["datasets"]) + (f" (held-out task {task_holdout})" if task_holdout else f" ({test_size:.0%} test split, seed {seed})")
    paths = write_outputs(result, out_dir, title)
    click.echo(format_table(result))
    click.echo(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    run_id = None
    if not no_mlflow:
        settings = get_settings()
        params = {"logs": ",".join(logs), "router": router_uri or "trained", "predictors": ",".join(predictors), "cascades": cascades}
        run_id = log_to_mlflow(result, paths, experiment or settings.experiment, params)
        click.echo(f"logged to MLflow run {run_id}")
    return {
        "command": "replay",
        "title": title,
        "n_test_prompts": len(result.evalset.texts),
        "models": result.single_models,
        "best_learned": result.best_learned(),
        "metrics": result.metrics,
        "files": {key: str(path) for key, path in paths.items()},
        "mlflow_run_id": run_id,
    }


# -------------------------------------------------------------------------- tune


@command()
@_options(logs_option, prices_option, catalog_option, router_option, test_size_option(0.3), seed_option, task_holdout_option)
@click.option("--name", required=True, help="profile name; serving exposes the profile as this model name")
@click.option("--target-quality", default=None, help="least mean success: absolute (0.8), or a share of the best single model (95%, or 0.95 with --relative)")
@relative_option
@click.option("--max-cost-per-request", "max_cost", type=float, default=None, help="most mean USD per request")
@click.option("--budget", type=float, default=None, help="USD to spend over --requests requests")
@click.option("--requests", type=int, default=None, help="expected number of requests the --budget must pay for")
@click.option("--policy", type=click.Choice(["threshold", "tradeoff", "any"]), default="any", show_default=True, help="policy whose knob is tuned")
@click.option("--cascade", "cascade", is_flag=True, help="save a cascade (cheap models first, escalate when their answer fails a check), searched on the tuning split; logs with parsed answers")
@click.option("--cascade-family", type=click.Choice(["fixed", "confidence", "learned", "any"]), default="any", show_default=True, help="with --cascade: the family of acceptance tests to choose from")
@click.option("--cascade-models", default=8, show_default=True, type=click.IntRange(2, 12), help="with --cascade: at most this many models (on or near the cost-quality hull) to draw stages from")
@predictor_option(DEFAULT_PREDICTOR)
@_options(confidence_option, experiment_option, no_mlflow_option)
@json_result
def tune(logs, prices, catalogs, router_uri, test_size, seed, task_holdout, name, target_quality, relative, max_cost, budget, requests, policy, cascade, cascade_family, cascade_models, predictor, confidence, experiment, no_mlflow):
    """Choose the knob (or, with --cascade, the cascade) that meets a quality or cost target on a validation split; save it as a named profile."""
    from router.profiles import ProfileError
    from training.sweep import POLICIES
    from training.targets import Target
    from training.tune import tune as run_tune

    _quiet_git()
    try:
        target = Target.parse(target_quality, max_cost, budget, requests, relative=relative)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    table = _catalog(prices, catalogs).prices()
    frame = _read(logs, table)
    router = _load_router(router_uri)
    settings = get_settings()
    if cascade:
        from training.tune import tune_cascade

        try:
            result = tune_cascade(
                frame, table, target, name, router=router, router_uri=router_uri, profiles_dir=settings.profiles_dir,
                families=None if cascade_family == "any" else (cascade_family,), predictor=predictor, test_size=test_size,
                seed=seed, task_holdout=task_holdout, max_models=cascade_models, confidence=confidence, echo=say,
            )
        except (ProfileError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        p, v, t = result.profile, result.validation, result.test
        click.echo(f"target: {result.target.describe(v['best_single'])}, certified with {confidence:.0%} confidence")
        click.echo(f"chosen on {result.n_validation} tuning prompts (out-of-fold): cascade/{p.target['family']} {p.target['describe']} "
                   f"-> success {v['quality']:.3f}, ${v['cost']:.3g} per request")
        click.echo(
            f"on {result.n_test} test prompts (not used for the choice): success {t['quality']:.3f}, ${t['cost']:.3g} per request, "
            f"{t['calls_per_request']:.2f} calls (best single model {t['best_single']:.3f}) -> target {'met' if t['target_met'] else 'MISSED'} on the test split"
        )
        click.echo(f"saved cascade profile {p.name!r} to {result.path} (router: {p.router_uri})")
        return {
            "command": "tune",
            "profile": {"name": p.name, "cascade": p.target.get("describe"), "family": p.target.get("family"),
                        "router_uri": p.router_uri, "path": result.path},
            "target": result.target.describe(v["best_single"]),
            "validation": {"n_prompts": result.n_validation, **v},
            "test": {"n_prompts": result.n_test, **t},
            "mlflow_run_id": None,
        }
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
            confidence=confidence,
            echo=say,
        )
    except (ProfileError, ValueError) as exc:  # TargetError is a ValueError
        raise click.ClickException(str(exc)) from None
    p, v, t = result.profile, result.validation, result.test
    if v["certified"]:
        click.echo(f"target: {result.target.describe(v['best_single'])}, certified with {confidence:.0%} confidence")
    else:
        click.echo(f"target: NOT CERTIFIED — {v['not_certified']}.")
        click.echo("  the profile sends every request to the most likely model (threshold knob "
                   f"{p.knob:g}); lower --target-quality or --confidence, or give more logs, to route")
    click.echo(f"chosen on {result.n_validation} validation prompts: {p.policy} knob {p.knob:.6g} -> success {v['quality']:.3f}, ${v['cost']:.3g} per request")
    click.echo(
        f"on {result.n_test} test prompts (not used for the choice): success {t['quality']:.3f}, ${t['cost']:.3g} per request "
        f"(best single model {t['best_single']:.3f}) -> target {'met' if t['target_met'] else 'MISSED'} on the test split"
    )
    click.echo(f"saved profile {p.name!r} to {result.path} (router: {p.router_uri})")
    run_id = None
    if not no_mlflow:
        import mlflow

        from training import tracking

        with tracking.start_run(experiment or settings.experiment, run_name=f"tune-{name}") as run:
            mlflow.log_params({"logs": ",".join(logs)[:500], "profile": name, "policy": p.policy, "knob": p.knob, "target": result.target.describe(v["best_single"])[:500], "router": str(p.router_uri)[:500]})
            mlflow.log_metrics({"validation/quality": v["quality"], "validation/cost": v["cost"], "test/quality": t["quality"], "test/cost": t["cost"], "test/target_met": float(t["target_met"])})
            mlflow.log_artifact(str(result.path))
        run_id = run.info.run_id
        click.echo(f"logged to MLflow run {run_id}")
    return {
        "command": "tune",
        "profile": {"name": p.name, "policy": p.policy, "knob": p.knob, "router_uri": p.router_uri,
                    "allowed": p.allowed, "path": result.path},
        "target": result.target.describe(v["best_single"]),
        "validation": {"n_prompts": result.n_validation, **v},
        "test": {"n_prompts": result.n_test, **t},
        "mlflow_run_id": run_id,
    }


# -------------------------------------------------------------------------- data


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
