"""Progress bars on a terminal only, and messages that never break a bar.

A bar redraws its line in place; a message written while it is drawn would
land in the middle of that line. Bars are therefore drawn only when stderr is
a terminal (never into a pipe, a log file or a test runner), and messages go
through :func:`say`, which lifts an active bar, writes the line and redraws
the bar below it. Use bars as context managers, so that an error closes them
before it is reported.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def on_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def bar(iterable=None, *, enabled: bool = True, **kw) -> tqdm:
    """A tqdm bar on stderr, drawn only when ``enabled`` and stderr is a terminal."""
    return tqdm(iterable, disable=not (enabled and on_terminal()), file=sys.stderr, dynamic_ncols=True, **kw)


def say(message: str) -> None:
    """One line on stderr, above any bar being drawn."""
    tqdm.write(message, file=sys.stderr)
