"""The ``thrifty`` command: subcommands from ``models``, ``training`` and ``serving``.

This module is the only place that sees both layers, and it imports each
lazily, only when one of its subcommands runs: ``training`` and ``serving``
never import each other, and ``thrifty serve`` does not pay for the
training stack's imports.
"""

from __future__ import annotations

import importlib

import click

# subcommand -> "module:attribute" of a click command
COMMANDS = {
    "train": "training.cli:train",
    "replay": "training.cli:replay",
    "tune": "training.cli:tune",
    "retrain": "training.cli:retrain",
    "promote": "training.cli:promote",
    "data": "training.cli:data",
    "serve": "serving.cli:serve",
    "logs": "serving.cli:logs",
    "report": "serving.cli:report",
    "models": "models.cli:models",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:  # e.g. an optional dependency is missing
            reason = str(exc)
            return click.Command(name, help=f"(unavailable: {reason})", callback=lambda: _unavailable(name, reason))


def _unavailable(name: str, reason: str):
    raise click.ClickException(f"'{name}' is unavailable: {reason}")


@click.group(cls=LazyGroup)
@click.version_option(package_name="thrifty")
def main():
    """thrifty: route each LLM request to the cheapest model predicted to succeed."""


if __name__ == "__main__":
    main()
