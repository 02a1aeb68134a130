"""The server's configuration: a YAML file, overridable by ``THRIFTY_SERVE_*`` variables.

Precedence, highest first: keyword arguments (the CLI's ``--host``/``--port``
...), environment (``THRIFTY_SERVE_PORT=9000``, nested with ``__``:
``THRIFTY_SERVE_UPSTREAMS__OPENAI__API_KEY``), the YAML file, defaults.
Paths left unset default to thrifty's home (``models.settings``).

Example::

    router_uri: models:/thrifty@champion      # or a .joblib file
    catalog: [my-models.yaml]                 # relative paths: relative to this file's folder
    api_keys:                                 # client keys, by name
      app-frontend: thr-...
    upstreams:
      openai: {api_key_env: OPENAI_API_KEY}
      anthropic: {api_key: sk-ant-..., base_url: https://api.anthropic.com}
    store_path: ~/.thrifty/outcomes.db
    redact_prompts: false
    access_log: false                         # uvicorn's per-request access log line (off by default)

Nothing is read at import time; :func:`get_config` caches the config of the
process (tests pass a config to ``create_app`` or call ``get_config.cache_clear()``).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from models.settings import get_settings

CONFIG_ENV = "THRIFTY_SERVE_CONFIG"
_config_file: ContextVar[Path | None] = ContextVar("thrifty_serve_config_file", default=None)


class UpstreamConfig(BaseModel):
    """Key and base URL for one provider family, used when a catalog entry does not name its own."""

    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr | None = None
    api_key_env: str | None = None
    base_url: str | None = None

    def resolved_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


class BudgetConfig(BaseModel):
    """A spend limit for one client (API key name; ``"*"`` applies to each client without its own).

    ``period``: ``hour``, ``day``, ``week`` or ``month`` (calendar periods in UTC), or a number of seconds.
    """

    model_config = ConfigDict(extra="forbid")

    amount_usd: float = Field(gt=0)
    period: Union[Literal["hour", "day", "week", "month"], float] = "day"

    @field_validator("period")
    @classmethod
    def _period_positive(cls, value):
        if isinstance(value, float) and not value > 0:
            raise ValueError("a period in seconds must be positive")
        return value


_PATH_KEYS = ("catalog", "profiles_dir", "store_path")


class _YamlFile(YamlConfigSettingsSource):
    """The config file. Relative paths in it are relative to the file's folder, so a config and
    the catalog beside it work from any working directory (paths from variables or options stay
    relative to the working directory)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path):
        self.folder = path.resolve().parent
        super().__init__(settings_cls, yaml_file=path)

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()

        def anchored(value):
            if isinstance(value, str) and value and not value.startswith("~") and not Path(value).is_absolute():
                return str(self.folder / value)
            return value

        for key in _PATH_KEYS:
            if key in data:
                value = data[key]
                data[key] = [anchored(v) for v in value] if isinstance(value, list) else anchored(value)
        return data


class ServingConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="THRIFTY_SERVE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)

    router_uri: str | None = Field(default=None, description="default: models:/<registry_name>@champion")
    passthrough_only: bool = Field(
        default=False,
        description="load no router: serve catalog models requested by id only (a request for a router profile gets a 404 "
        "saying routing is off); without it, `thrifty serve` refuses to start when no router can route",
    )
    catalog: list[Path] = Field(default_factory=list, description="catalog files on top of the shipped one")
    include_default_catalog: bool = True
    profiles_dir: Path | None = Field(default=None, description="default: <home>/profiles")
    default_profile: str = "thrifty"

    api_keys: dict[str, SecretStr] = Field(default_factory=dict, description="client name -> router API key")
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict, description="openai / anthropic / openai-compatible")

    store_path: Path | None = Field(default=None, description="default: <home>/outcomes.db")
    redact_prompts: bool = False
    store_responses: bool = False

    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    upstream_timeout_s: float = Field(default=600.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    upstream_max_retries: int = Field(default=0, ge=0, description="SDK-level retries per candidate")
    max_attempts: int = Field(default=3, ge=1, description="upstream calls per request, fail-over and retries included")
    default_max_tokens: int = Field(default=4096, gt=0)

    # reliability: fail-over along the decision's ranking, deadlines, circuit breakers, graceful drain
    deadline_s: float = Field(default=60.0, gt=0, description="time to answer a request (a stream: to its first byte)")
    attempt_timeout_s: float = Field(default=30.0, gt=0, description="one non-streaming upstream call, whole answer")
    first_token_timeout_s: float = Field(
        default=15.0, gt=0,
        description="one streaming call: headers and first token; a slower upstream fails over to the next candidate",
    )
    stream_idle_timeout_s: float = Field(default=30.0, gt=0, description="silence inside a stream that counts as a stall")
    retry_after_max_s: float = Field(default=5.0, ge=0, description="longest upstream Retry-After waited for (else fail over)")
    same_model_retries: int = Field(
        default=1, ge=0,
        description="calls of the same model again after a transient failure (HTTP 500/502/503/504, connection reset), "
        "within max_attempts and the deadline, before the next candidate",
    )
    failover_to_unacceptable: bool = Field(default=False, description="also fail over to models the policy ranks unacceptable")
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict,
        description="catalog model id -> catalog ids to fail over to, in order, when that model is requested by id "
        "(a request's thrifty.fallback_models replaces the list)",
    )
    mid_stream_recovery: bool = Field(
        default=True,
        description="a text stream that fails after tokens reached the client is continued by the next candidate "
        "(README: Reliability guarantees); off: it ends with an error event",
    )
    breaker_failures: int = Field(default=5, ge=1, description="consecutive failures that take a model out")
    breaker_cooldown_s: float = Field(default=2.0, gt=0, description="first time out before a probe request")
    breaker_max_cooldown_s: float = Field(
        default=60.0, gt=0, description="longest time out: each failed probe multiplies it by breaker_backoff up to this"
    )
    breaker_backoff: float = Field(default=2.0, ge=1, description="factor of the time out after each failed probe")
    graceful_shutdown_s: float = Field(default=30.0, gt=0, description="on SIGTERM: time for in-flight requests to finish")
    access_log: bool = Field(
        default=False,
        description="uvicorn's access log, one line per request (off by default: it costs CPU on every request, and "
        "the outcome store and /metrics already record each one); `thrifty serve --access-log` turns it on",
    )
    store_synchronous: Literal["NORMAL", "FULL"] = Field(
        default="NORMAL", description="NORMAL survives a process kill; FULL also an OS crash or power loss"
    )
    budgets: dict[str, BudgetConfig] = Field(default_factory=dict, description="client name (or '*') -> spend limit")

    explore_epsilon: float = Field(default=0.0, ge=0, le=1, description="share of routed traffic spent exploring acceptable models")
    explore_seed: int | None = Field(default=None, description="seed of the exploration draws (tests, simulations)")
    reload_interval_s: float = Field(default=30.0, ge=0, description="poll the registry alias for a new champion; 0 disables")

    @field_validator("upstreams", mode="before")
    @classmethod
    def _upstream_names(cls, value):
        # Variable names cannot hold a '-': THRIFTY_SERVE_UPSTREAMS__OPENAI_COMPATIBLE__BASE_URL arrives as
        # 'openai_compatible' and overrides the file's 'openai-compatible' field by field.
        if not isinstance(value, dict) or "openai_compatible" not in value:
            return value
        value = dict(value)
        from_env = value.pop("openai_compatible")
        from_file = value.get("openai-compatible") or {}
        if isinstance(from_file, dict) and isinstance(from_env, dict):
            value["openai-compatible"] = {**from_file, **from_env}
        else:
            value["openai-compatible"] = from_env
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_not_empty(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, key in value.items():
            if len(key.get_secret_value()) < 8:
                raise ValueError(f"api key {name!r} is too short (at least 8 characters)")
        return value

    @model_validator(mode="after")
    def _budgets_name_clients(self) -> "ServingConfig":
        known = set(self.api_keys) | {"*", "anonymous"}
        unknown = sorted(set(self.budgets) - known)
        if unknown:
            raise ValueError(f"budgets name unknown client(s) {unknown}: use names of api_keys or '*'")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            sources.append(_YamlFile(settings_cls, path))
        return tuple(sources)

    # -- resolved values -----------------------------------------------------
    @property
    def resolved_router_uri(self) -> str:
        return self.router_uri or f"models:/{get_settings().registry_name}@champion"

    @property
    def resolved_profiles_dir(self) -> Path:
        return (self.profiles_dir or get_settings().profiles_dir).expanduser()

    @property
    def resolved_store_path(self) -> Path:
        return (self.store_path or get_settings().home_dir / "outcomes.db").expanduser()

    @property
    def resolved_catalog(self) -> list[Path]:
        return [p.expanduser() for p in (self.catalog or get_settings().catalog)]

    def client_keys(self) -> dict[str, str]:
        """Router API key -> client name."""
        return {key.get_secret_value(): name for name, key in self.api_keys.items()}

    def upstream_secrets(self) -> list[str]:
        """Every upstream key this config knows, to scrub from anything shown or stored."""
        keys = [u.resolved_key() for u in self.upstreams.values()]
        return [k for k in keys if k]


class ConfigError(ValueError):
    """The configuration file or values are invalid."""


def load_config(path: str | Path | None = None, **overrides: Any) -> ServingConfig:
    """The config from ``path`` (or ``$THRIFTY_SERVE_CONFIG``), the environment and ``overrides``."""
    path = path or os.environ.get(CONFIG_ENV)
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
    token = _config_file.set(path)
    try:
        return ServingConfig(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_file.reset(token)


@lru_cache(maxsize=1)
def get_config() -> ServingConfig:
    return load_config()
