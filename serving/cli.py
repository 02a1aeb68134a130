"""``thrifty serve``, ``thrifty logs export`` and ``thrifty report``."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from models.jsonout import json_result
from serving.config import CONFIG_ENV, ConfigError, load_config


def _config(path: str | None, **overrides):
    try:
        return load_config(path, **overrides)
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def _preflight(config):
    """The catalog and router, checked before uvicorn starts: a server that cannot route says why in one line."""
    from models.catalog import CatalogError
    from models.registry import RouterNotFoundError
    from serving.services import preflight
    from serving.startup import StartupError

    try:
        return preflight(config)
    except RouterNotFoundError as exc:
        raise click.ClickException(
            f"{exc}; or set `passthrough_only: true` in the config to serve catalog models by id only"
        ) from None
    except (StartupError, CatalogError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging configuration, plus thrifty's loggers on its console handler, every handler scrubbed of secrets."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["scrub"] = {"()": "serving.secrets.ScrubFilter"}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "scrub"]
    config["loggers"]["thrifty"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


@click.command()
@click.option("--config", "--config-file", "config_path", type=click.Path(dir_okay=False),
              help="YAML config (default: $THRIFTY_SERVE_CONFIG); --config-file is the same option, for wrappers "
              "such as opentelemetry-instrument that would take --config as an abbreviation of their own")
@click.option("--host", default=None, help="address to bind (default 127.0.0.1)")
@click.option("--port", type=int, default=None, help="port (default 8000)")
@click.option("--workers", type=int, default=None, help="worker processes (default 1)")
@click.option("--log-level", default="info", show_default=True)
@click.option("--access-log/--no-access-log", default=None,
              help="uvicorn's per-request access log (default: the config's access_log, off)")
def serve(config_path, host, port, workers, log_level, access_log):
    """Serve the OpenAI- and Anthropic-compatible routing endpoint."""
    import uvicorn

    config = _config(config_path, host=host, port=port, workers=workers, access_log=access_log)
    _check_store(config.resolved_store_url, config.store_synchronous)  # before the router: the cheaper check
    catalog, loaded = _preflight(config)
    _check_tracing(config.otel_endpoint)
    if config.workers > 1:
        # Worker processes each build their own app from the environment.
        if config_path:
            os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
        for name, value in (("HOST", host), ("PORT", port), ("ACCESS_LOG", access_log)):
            if value is not None:
                os.environ[f"THRIFTY_SERVE_{name}"] = str(value)
        from serving.metrics import MULTIPROCESS_ENV

        # the workers' metrics meet in a directory of this server's own, so every scrape shows them all
        metrics_dir = tempfile.mkdtemp(prefix="thrifty-metrics-")
        os.environ[MULTIPROCESS_ENV] = metrics_dir
        try:
            uvicorn.run(
                "serving.app:create_app_from_env", factory=True, host=config.host, port=config.port,
                workers=config.workers, log_level=log_level, access_log=config.access_log,
                timeout_graceful_shutdown=config.graceful_shutdown_s, log_config=log_config(log_level),
            )
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return
    from serving.app import create_app

    # SIGTERM/SIGINT: stop accepting, let requests in flight finish (their records are written), then exit
    uvicorn.run(
        create_app(config, router=loaded, catalog=catalog), host=config.host, port=config.port, log_level=log_level,
        access_log=config.access_log, timeout_graceful_shutdown=config.graceful_shutdown_s, log_config=log_config(log_level),
    )


def _check_store(url: str, synchronous: str) -> None:
    """Open the outcome store once before serving: created or migrated now, and a bad one is one clear line."""
    from models.store import StoreError, open_store

    try:
        open_store(url, synchronous=synchronous).close()
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def _check_tracing(config_endpoint: str | None) -> None:
    """Span export configured without the SDK installed: one line before serving, not a failed start-up."""
    from serving.tracing import TracingUnavailable, check

    try:
        check(config_endpoint)
    except TracingUnavailable as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def logs():
    """The outcome store of served traffic."""


@logs.command("export")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="output file: .parquet, .jsonl or .csv")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config naming the store")
@click.option("--store", "store_url", default=None,
              help="the outcome store: a SQLite file or sqlite:/// URL, or postgresql://user@host:port/db (overrides the config)")
@click.option("--include-unlabeled", is_flag=True, help="also export answered requests without feedback")
@json_result
def export(out, config_path, store_url, include_unlabeled):
    """Write served outcomes (decisions joined with feedback) in the canonical outcome format."""
    from models.store import StoreError, open_store
    from serving.export import check_format, export_outcomes

    url = store_url or _config(config_path).resolved_store_url
    try:
        check_format(out)
        with open_store(url, create=False) as store:
            frame = export_outcomes(store, out, include_unlabeled=include_unlabeled)
    except (StoreError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(f"wrote {len(frame)} outcome rows to {out}")
    return {"command": "logs export", "out": str(Path(out).resolve()), "rows": len(frame),
            "labeled": int(frame["success"].notna().sum()), "include_unlabeled": include_unlabeled}


@click.command("report")
@click.option("--html", "html_path", required=True, type=click.Path(dir_okay=False), help="the HTML file to write")
@click.option("--logs", "logs_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="served outcomes written by `thrifty logs export --include-unlabeled` (.parquet, .jsonl or .csv)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="serve config whose catalog prices the baseline")
@click.option("--catalog", "catalogs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="catalog file(s) on top of the shipped catalog (repeatable)")
@click.option("--since", default=None, help="start of the period (date, ISO time or epoch seconds; default: the first request)")
@click.option("--until", default=None, help="end of the period (default: after the last request)")
@click.option("--baseline", default=None, help="the model to compare with (default: the model the router predicts best)")
@json_result
def report(html_path, logs_path, config_path, catalogs, since, until, baseline):
    """The savings report of an exported log, as one HTML file (the page /dashboard shows)."""
    import pandas as pd

    from models.catalog import CatalogError, load_catalog
    from serving import report as savings
    from serving.dashboard import PeriodError, parse_time

    try:
        if config_path:
            config = _config(config_path)
            catalog = load_catalog([*config.resolved_catalog, *catalogs], include_default=config.include_default_catalog)
        else:
            catalog = load_catalog(list(catalogs))
        suffix = Path(logs_path).suffix.lower()
        if suffix == ".parquet":
            frame = pd.read_parquet(logs_path)
        elif suffix == ".jsonl":
            frame = pd.read_json(logs_path, lines=True)
        elif suffix == ".csv":
            frame = pd.read_csv(logs_path)
        else:
            raise savings.ReportError(f"{logs_path}: unsupported format {suffix!r}; use .parquet, .jsonl or .csv")
        built = savings.build(frame, catalog.prices(), since=parse_time(since, "--since") if since else None,
                              until=parse_time(until, "--until") if until else None, baseline=baseline, where=logs_path)
    except (savings.ReportError, PeriodError, CatalogError) as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read {logs_path}: {exc}") from None
    page = savings.render(built, source=f"from {Path(logs_path).name}")
    try:
        Path(html_path).write_text(page, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {html_path}: {exc.strerror or exc}") from None
    click.echo(f"wrote {html_path}: {built.requests} requests, spend {savings.usd(built.spend)} vs "
               f"{savings.usd(built.counterfactual)} all on {built.baseline}")
    return {"command": "report", "html": str(Path(html_path).resolve()), **built.to_dict()}
