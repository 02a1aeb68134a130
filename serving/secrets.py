"""One scrubber for every credential thrifty holds, applied to everything it shows or logs.

The process has one :class:`Scrubber` (:func:`get_scrubber`). At start-up,
and again when a router is hot-swapped, the app registers every credential
the provider pool can send upstream (:func:`pool_credentials`) and the client
keys of the config. Then:

* upstream error text becomes client-visible only through :meth:`Scrubber.scrub`
  (:func:`serving.errors.from_upstream`, JSON errors and stream error events alike);
* log records of thrifty's loggers, uvicorn's and the SDKs' pass through
  :class:`ScrubFilter` (message, arguments, traceback), installed on those
  loggers and on the handlers that print them (:func:`install_log_filter`).

Credentials shorter than :data:`MIN_SECRET_CHARS` are not registered: they
would garble ordinary text and are no keys worth the name.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from functools import lru_cache
from typing import Any, Iterable, Mapping

from models.catalog import Catalog
from models.providers import MissingUpstreamKey, ProviderPool
from models.providers.pool import ENV_KEYS

MIN_SECRET_CHARS = 8
REDACTED = "[redacted]"

# Credentials the official SDKs read from the environment on their own (the pool passes its key
# explicitly, but an SDK still sends e.g. ANTHROPIC_CUSTOM_HEADERS, and a key may sit in several).
SDK_CREDENTIAL_ENV = (
    "OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_WEBHOOK_SECRET",
    "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_WEBHOOK_SIGNING_KEY", "ANTHROPIC_IDENTITY_TOKEN",
)
SDK_HEADER_ENV = ("ANTHROPIC_CUSTOM_HEADERS",)  # "Name: value" lines, added to every upstream call

# Loggers whose records are scrubbed where they are emitted (a logger's filter sees only its own records;
# the handlers' filters catch what their children propagate).
LOGGERS = ("thrifty", "thrifty.serving", "thrifty.training", "uvicorn", "uvicorn.error", "uvicorn.access",
           "uvicorn.asgi", "openai", "anthropic", "httpx", "httpx2", "httpcore", "aiohttp", "aiohttp.client")


class Scrubber:
    """Replaces every registered secret in a text with ``[redacted]``."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern | None = None
        self._lock = threading.Lock()

    def register(self, secrets: Iterable[str | None]) -> int:
        """Add ``secrets`` (None, empty and short values are ignored); the number newly added."""
        fresh = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS} - self._secrets
        if fresh:
            with self._lock:
                self._secrets |= fresh
                # longest first: a key that contains another is replaced whole
                ordered = sorted(self._secrets, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(s) for s in ordered))
        return len(fresh)

    def __len__(self) -> int:
        return len(self._secrets)

    def __bool__(self) -> bool:  # a scrubber is always "there", even when it knows no secret yet
        return True

    def scrub(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(REDACTED, text)

    def scrub_value(self, value: Any) -> Any:
        """``value`` with secrets removed: strings scrubbed; other objects replaced by their scrubbed text when it holds one."""
        if isinstance(value, str):
            return self.scrub(value)
        if value is None or isinstance(value, (int, float, bool)):
            return value
        try:
            text = str(value)
        except Exception:  # noqa: BLE001 - an object that cannot print cannot leak through a log line either
            return value
        clean = self.scrub(text)
        return clean if clean != text else value


@lru_cache(maxsize=1)
def get_scrubber() -> Scrubber:
    """The process's scrubber (created on first use, never at import)."""
    return Scrubber()


# -- what to register --------------------------------------------------------------------


def header_values(lines: str | None) -> list[str]:
    """The values of ``Name: value`` lines (the format of ``ANTHROPIC_CUSTOM_HEADERS``)."""
    values = []
    for line in (lines or "").splitlines():
        _, colon, value = line.partition(":")
        if colon and value.strip():
            values.append(value.strip())
    return values


def pool_credentials(pool: ProviderPool, catalog: Catalog, env: Mapping[str, str] | None = None) -> list[str]:
    """Every credential ``pool`` can send for a model of ``catalog``.

    The configured upstream keys, the key the pool resolves for each catalog
    model (its ``api_key_env``, the config's ``upstreams``, the provider's
    environment fallback), every model's ``api_key_env`` value, the
    environment fallbacks of each provider family, and the credentials and
    extra headers the SDKs read from the environment themselves.
    """
    env = pool.env if env is None else env
    found: list[str | None] = [u.api_key for u in pool.upstreams.values()]
    for spec in catalog:
        if spec.api_key_env:
            found.append(env.get(spec.api_key_env))
        try:
            found.append(pool.api_key(spec))
        except MissingUpstreamKey:
            pass
    found += [env.get(name) for name in (*ENV_KEYS.values(), *SDK_CREDENTIAL_ENV)]
    for name in SDK_HEADER_ENV:
        found += header_values(env.get(name))
    if env is not os.environ:  # the SDKs themselves read the process environment
        found += [os.environ.get(name) for name in SDK_CREDENTIAL_ENV]
        for name in SDK_HEADER_ENV:
            found += header_values(os.environ.get(name))
    return [k for k in found if k]


# -- logging ----------------------------------------------------------------------------------


class ScrubFilter(logging.Filter):
    """Removes registered secrets from a log record: its message, its arguments and its traceback.

    Arguments keep their structure (uvicorn's access formatter unpacks them);
    an argument that is not a string or a number is replaced by its scrubbed
    text only when that text held a secret (an exception carrying an upstream
    message). Never drops a record.
    """

    def __init__(self, scrubber: Scrubber | None = None):
        super().__init__()
        self._scrubber = scrubber

    @property
    def scrubber(self) -> Scrubber:
        return self._scrubber or get_scrubber()

    def filter(self, record: logging.LogRecord) -> bool:
        scrubber = self.scrubber
        if not len(scrubber) or getattr(record, "_thrifty_scrubbed", False):
            return True
        try:
            if isinstance(record.msg, str):
                record.msg = scrubber.scrub(record.msg)
            else:
                record.msg = scrubber.scrub_value(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(scrubber.scrub_value(a) for a in record.args)
            elif isinstance(record.args, Mapping):
                record.args = {k: scrubber.scrub_value(v) for k, v in record.args.items()}
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = scrubber.scrub(record.exc_text)
            if record.stack_info:
                record.stack_info = scrubber.scrub(record.stack_info)
            record._thrifty_scrubbed = True
        except Exception:  # noqa: BLE001 - logging must never fail because of the scrubber
            pass
        return True


def _has_filter(target: logging.Filterer) -> bool:
    return any(isinstance(f, ScrubFilter) for f in target.filters)


def install_log_filter() -> None:
    """Put the scrub filter on thrifty's, uvicorn's and the SDKs' loggers and on the handlers that print them.

    Idempotent. Handlers created later by a logging configuration that names
    ``serving.secrets.ScrubFilter`` (``thrifty serve`` does) carry it already.
    """
    targets: list[logging.Filterer] = [logging.getLogger(name) for name in LOGGERS]
    targets += [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
                if name.startswith("thrifty.")]
    for logger in (logging.getLogger(), logging.getLogger("uvicorn"), logging.getLogger("uvicorn.access")):
        targets += logger.handlers
    if logging.lastResort is not None:
        targets.append(logging.lastResort)
    for target in targets:
        if not _has_filter(target):
            target.addFilter(ScrubFilter())
