"""``--json`` for the CLI: exactly one machine-readable object on stdout, everything else on stderr.

Shared by the training and serving commands (hence this bottom layer)::

    @click.command()
    @click.option(...)
    @json_result
    def train(...):
        ...                             # click.echo, print, library chatter: stdout as usual, stderr with --json
        return {"command": "train", ...}

With ``--json``, while the block runs, stdout is stderr: Python's ``sys.stdout``
and file descriptor 1 alike (so a library or C extension writing to stdout
cannot corrupt the object). When the block ends without an error, the object
is written to the real stdout as one line of JSON: NaN and infinities become
``null``, NumPy scalars and arrays plain numbers and lists, paths strings.
When it fails, stdout stays empty (the error is one line on stderr, exit code 1).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
from pathlib import PurePath
from typing import Any

import click

json_option = click.option(
    "--json", "as_json", is_flag=True,
    help="print one JSON object on stdout (its shape: README, 'Machine-readable output'); all other output goes to stderr",
)


def plain(value: Any) -> Any:
    """``value`` as JSON can hold it: non-finite numbers -> None, NumPy and pandas scalars -> numbers, paths -> str."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, PurePath):
        return str(value)
    tolist = getattr(value, "tolist", None)  # NumPy arrays and scalars
    if callable(tolist):
        return plain(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return plain(item())
    return str(value)


def dumps(obj: Any) -> str:
    return json.dumps(plain(obj), allow_nan=False, separators=(",", ":"))


class JsonOutput:
    """The context of a command run with (or without) ``--json``; set ``result`` to the object to print."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.result: dict | None = None
        self._saved_fd: int | None = None
        self._redirect: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> "JsonOutput":
        if not self.enabled:
            return self
        sys.stdout.flush()
        try:
            fd = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):  # not a real file (a test runner's capture): Python level only
            fd = None
        if fd is not None:
            self._saved_fd = os.dup(fd)
            os.dup2(sys.stderr.fileno(), fd)
        self._redirect = contextlib.redirect_stdout(sys.stderr)
        self._redirect.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.enabled:
            return
        sys.stderr.flush()
        self._redirect.__exit__(exc_type, exc, tb)
        if self._saved_fd is not None:
            sys.stdout.flush()
            os.dup2(self._saved_fd, sys.stdout.fileno())
            os.close(self._saved_fd)
            self._saved_fd = None
        if exc_type is None:
            if self.result is None:
                raise RuntimeError("a --json command ended without a result")
            sys.stdout.write(dumps(self.result) + "\n")
            sys.stdout.flush()


def json_result(command):
    """Give a click command a ``--json`` flag: with it, the object the command returns is its only stdout.

    Put it directly above the function (below the other option decorators).
    """

    @functools.wraps(command)
    def run(*args, as_json: bool = False, **kwargs):
        with JsonOutput(as_json) as out:
            out.result = command(*args, **kwargs)

    return json_option(run)
