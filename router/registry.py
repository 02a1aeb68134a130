"""Routers by URI, with the version that names them, and champion hot-swaps.

Shared by everything that serves a registered router — thrifty's own server
and the LiteLLM plug-in — so that both resolve ``models:/NAME@ALIAS`` the same
way and pick up a promotion the same way:

* :func:`load_router_uri` loads a router from a registry URI or a ``.joblib``
  file, with a stable version name (``NAME/VERSION`` or ``file@hash``);
* :func:`alias_version` asks the registry which version an alias points at;
* :class:`ChampionWatch` holds the router in force and swaps in the alias's
  new version when it moves (the swap is one reference assignment: a caller
  that took the router keeps it, the next caller gets the new one).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from models.registry import alias_version as registry_alias_version
from models.registry import use_store
from router.router import Router

REGISTRY_SCHEME = "models:/"


@dataclass(frozen=True)
class LoadedRouter:
    router: Router | None  # None: no router is loaded (a server with ``passthrough_only``)
    uri: str
    version: str


# What a server with ``passthrough_only: true`` holds instead of a router.
NO_ROUTER = LoadedRouter(None, "", "none (passthrough_only)")


def _alias_parts(uri: str) -> tuple[str, str] | None:
    """``(name, alias)`` of ``models:/NAME@ALIAS``, else None."""
    if not uri.startswith(REGISTRY_SCHEME) or "@" not in uri:
        return None
    name, _, alias = uri[len(REGISTRY_SCHEME):].partition("@")
    return name, alias


def alias_version(uri: str) -> str | None:
    """The registry version an alias URI points at now, or None for other URIs."""
    parts = _alias_parts(uri)
    if parts is None:
        return None
    return registry_alias_version(*parts)


def router_version(uri: str) -> str:
    """A stable name for the router behind ``uri``: registry name/version, or file name and content hash."""
    if uri.startswith(REGISTRY_SCHEME):
        parts = _alias_parts(uri)
        if parts is not None:
            try:
                return f"{parts[0]}/{alias_version(uri)}"
            except Exception:  # the version is informative only
                pass
        return uri
    path = Path(uri)
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        return f"{path.name}@{digest}"
    return uri


def load_router_uri(uri: str) -> LoadedRouter:
    """Load a router from a registry URI or a ``.joblib`` file.

    An alias is resolved to its version once, and that version is loaded, so
    the version name always belongs to the router returned even when the
    alias moves in between.
    """
    from router.persist import load_router

    if uri.endswith(".joblib"):
        return LoadedRouter(load_router(uri), uri, router_version(uri))
    use_store()
    parts = _alias_parts(uri)
    if parts is None:
        return LoadedRouter(load_router(uri), uri, router_version(uri))
    version = alias_version(uri)
    name = parts[0]
    return LoadedRouter(load_router(f"{REGISTRY_SCHEME}{name}/{version}"), uri, f"{name}/{version}")


class ChampionWatch:
    """The router behind one URI, reloaded when its registry alias moves.

    ``check()`` is blocking (a registry query, and a load when the alias
    moved): an asyncio caller runs it in a thread. Checks are serialised; the
    router in force is read without a lock.
    """

    def __init__(self, uri: str, loaded: LoadedRouter | None = None):
        self.uri = uri
        self._loaded = loaded
        self._lock = threading.Lock()

    @property
    def current(self) -> LoadedRouter | None:
        """The router in force, or None before the first load."""
        return self._loaded

    @property
    def loaded(self) -> LoadedRouter:
        """The router in force, loaded on first use."""
        loaded = self._loaded
        if loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = load_router_uri(self.uri)
                loaded = self._loaded
        return loaded

    def check(self) -> LoadedRouter | None:
        """Load the alias's new version if it moved; returns the new router, or None if nothing changed."""
        with self._lock:
            current = self._loaded
            if current is None or _alias_parts(self.uri) is None:
                return None
            use_store()
            version = alias_version(self.uri)
            if current.version.rsplit("/", 1)[-1] == version:
                return None
            self._loaded = load_router_uri(self.uri)
            return self._loaded
