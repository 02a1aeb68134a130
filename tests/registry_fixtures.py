"""A router registered as ``models:/thrifty@champion`` in a THRIFTY_HOME shared by one test module.

Registering into a fresh embedded MLflow store takes several seconds (the
store's migrations), so a module registers once::

    @pytest.fixture(scope="module")
    def champion(router_path, tmp_path_factory):
        with registered_champion(load_router_file(router_path), tmp_path_factory) as router:
            yield router
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest


@contextmanager
def registered_champion(router, tmp_path_factory, name: str = "thrifty"):
    """``router`` registered as version 1 of ``name`` with alias champion, in a new THRIFTY_HOME (set in the environment)."""
    from models.settings import get_settings
    from training.tracking import register_router, start_run

    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("thrifty-home")
        mp.setenv("THRIFTY_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("THRIFTY_TRACKING_URI", raising=False)
        get_settings.cache_clear()
        try:
            with start_run("registry-tests"):
                register_router(router, name)
            yield router
        finally:
            get_settings.cache_clear()
