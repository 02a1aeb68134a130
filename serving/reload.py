"""Picking up a new champion without a restart.

A :class:`RegistryWatcher` polls the MLflow registry for the version behind
the default router's alias (``models:/NAME@champion``). When promotion moves
the alias, it loads the new version off the event loop and swaps it into the
:class:`~serving.routing.RouterHolder` atomically: requests in flight keep
the router they started with, new requests get the new one, none is dropped.
"""

from __future__ import annotations

import asyncio
import logging

from router.registry import alias_version
from serving.routing import LoadedRouter, RouterHolder, load_router_uri
from serving.tracing import detached

log = logging.getLogger("thrifty.serving")


class RegistryWatcher:
    def __init__(self, holder: RouterHolder, interval_s: float, on_swap=None):
        self.holder = holder
        self.interval_s = interval_s
        self.on_swap = on_swap
        self._task: asyncio.Task | None = None

    async def check_once(self) -> bool:
        """Reload the default router if its alias moved; True when a new router was swapped in."""
        current: LoadedRouter = self.holder.get()
        version = await asyncio.to_thread(alias_version, current.uri)
        if version is None or current.version.rsplit("/", 1)[-1] == version:
            return False
        loaded = await asyncio.to_thread(load_router_uri, current.uri)
        self.holder.swap(loaded)
        log.info("router %s hot-swapped: %s -> %s", current.uri, current.version, loaded.version)
        if self.on_swap:
            self.on_swap(current, loaded)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_once()
            except Exception as exc:  # a registry hiccup must not stop serving with the router in hand
                log.warning("router reload check failed: %s", exc)

    def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            # Out of every trace: no request's span as parent, and the registry's SQLite and HTTP
            # calls (MLflow, in threads that copy this context) make no spans every few seconds.
            with detached():
                self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
