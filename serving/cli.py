"""``thrifty serve`` and ``thrifty logs export``."""

from __future__ import annotations

import os
from pathlib import Path

import click

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


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config (default: $THRIFTY_SERVE_CONFIG)")
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
    catalog, loaded = _preflight(config)
    if config.workers > 1:
        # Worker processes each build their own app from the environment.
        if config_path:
            os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
        for name, value in (("HOST", host), ("PORT", port), ("ACCESS_LOG", access_log)):
            if value is not None:
                os.environ[f"THRIFTY_SERVE_{name}"] = str(value)
        uvicorn.run(
            "serving.app:create_app_from_env", factory=True, host=config.host, port=config.port,
            workers=config.workers, log_level=log_level, access_log=config.access_log,
            timeout_graceful_shutdown=config.graceful_shutdown_s,
        )
        return
    from serving.app import create_app

    # SIGTERM/SIGINT: stop accepting, let requests in flight finish (their records are written), then exit
    uvicorn.run(
        create_app(config, router=loaded, catalog=catalog), host=config.host, port=config.port, log_level=log_level,
        access_log=config.access_log, timeout_graceful_shutdown=config.graceful_shutdown_s,
    )


@click.group()
def logs():
    """The outcome store of served traffic."""


@logs.command("export")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="output file: .parquet, .jsonl or .csv")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config naming the store")
@click.option("--store", "store_path", type=click.Path(dir_okay=False), help="the SQLite store (overrides the config)")
@click.option("--include-unlabeled", is_flag=True, help="also export answered requests without feedback")
def export(out, config_path, store_path, include_unlabeled):
    """Write served outcomes (decisions joined with feedback) in the canonical outcome format."""
    from serving.export import export_outcomes

    path = Path(store_path) if store_path else _config(config_path).resolved_store_path
    if not path.is_file():
        raise click.ClickException(f"no outcome store at {path}")
    try:
        frame = export_outcomes(path, out, include_unlabeled=include_unlabeled)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {len(frame)} outcome rows to {out}")
