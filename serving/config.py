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
    store_url: ~/.thrifty/outcomes.db          # or sqlite:///..., postgresql://user@host:5432/db
    admin_keys: [app-frontend]                # clients that may give feedback on any decision
    on_unmet_limit: refuse                    # or degrade: answer with the closest model, say so in a header
    redact_prompts: false
    access_log: false                         # uvicorn's per-request access log line (off by default)

A string value ``os.environ/NAME`` anywhere in the config (the LiteLLM
convention: ``api_keys: {app: os.environ/APP_KEY}``, upstream keys, base
URLs, budget amounts) is replaced by the variable's value when the config is
loaded; a variable that is not set is a :class:`ConfigError` naming the key
and the variable. Validation errors never print the values they refused
(keys are secrets).

Nothing is read at import time; :func:`get_config` caches the config of the
process (tests pass a config to ``create_app`` or call ``get_config.cache_clear()``).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from models.settings import get_settings

CONFIG_ENV = "THRIFTY_SERVE_CONFIG"
ENV_REFERENCE = "os.environ/"
_config_file: ContextVar[Path | None] = ContextVar("thrifty_serve_config_file", default=None)


class UpstreamConfig(BaseModel):
    """Key and base URL for one provider family, used when a catalog entry does not name its own."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

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

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    amount_usd: float = Field(gt=0)
    period: Union[Literal["hour", "day", "week", "month"], float] = "day"

    @field_validator("period")
    @classmethod
    def _period_positive(cls, value):
        if isinstance(value, float) and not value > 0:
            raise ValueError("a period in seconds must be positive")
        return value


_PATH_KEYS = ("catalog", "profiles_dir", "store_path", "store_url")


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
            if isinstance(value, str) and value and "://" not in value and not value.startswith("~") and not Path(value).is_absolute():
                return str(self.folder / value)
            return value

        for key in _PATH_KEYS:
            if key in data:
                value = data[key]
                data[key] = [anchored(v) for v in value] if isinstance(value, list) else anchored(value)
        return data


class ServingConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="THRIFTY_SERVE_", env_nested_delimiter="__", extra="forbid", validate_default=True,
        hide_input_in_errors=True,  # a refused value may be a key: errors name the field, never print the value
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
    admin_keys: list[str] = Field(
        default_factory=list,
        description="client names (of api_keys) that may give feedback on any client's decisions and view /dashboard "
        "(empty: the dashboard is open to every client, feedback to each on its own decisions)",
    )
    upstreams: dict[str, UpstreamConfig] = Field(default_factory=dict, description="openai / anthropic / openai-compatible")

    store_url: str | None = Field(
        default=None,
        description="the outcome store: a SQLite file path or sqlite:/// URL, or postgresql://user@host:port/db "
        "(replicas share one); default: <home>/outcomes.db",
    )
    store_path: Path | None = Field(
        default=None, description="deprecated: the older name of store_url, for a SQLite file (store_url wins when both are set)"
    )
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

    on_unmet_limit: Literal["refuse", "degrade"] = Field(
        default="refuse",
        description="a request's max-cost / min-quality limit that no allowed model meets: refuse with a 400 naming "
        "the best available value, or degrade to the closest model (header x-thrifty-limit-unmet); a request may "
        "choose with x-thrifty-on-unmet-limit or thrifty.on_unmet_limit",
    )

    explore_epsilon: float = Field(default=0.0, ge=0, le=1, description="share of routed traffic spent exploring acceptable models")
    explore_seed: int | None = Field(default=None, description="seed of the exploration draws (tests, simulations)")
    reload_interval_s: float = Field(default=30.0, ge=0, description="poll the registry alias for a new champion; 0 disables")
    otel_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector to export thrifty's OpenTelemetry spans to (e.g. http://localhost:4318); "
        "default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT; unset: no spans exported "
        "(needs pip install 'thrifty[otel]')",
    )

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

    @model_validator(mode="before")
    @classmethod
    def _resolve_env_references(cls, data: Any) -> Any:
        """``os.environ/NAME`` string values replaced by the variable's value; every missing variable named."""
        missing: list[str] = []
        resolved = resolve_env_references(data, missing)
        if missing:
            raise ValueError("; ".join(missing))
        return resolved

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
        unknown = sorted(set(self.admin_keys) - set(self.api_keys))
        if unknown:
            raise ValueError(f"admin_keys name unknown client(s) {unknown}: use names of api_keys")
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
    def resolved_store_url(self) -> str:
        """The outcome store's URL (or SQLite path), for :func:`models.store.open_store`."""
        if self.store_url:
            return self.store_url
        return str((self.store_path or get_settings().home_dir / "outcomes.db").expanduser())

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


def resolve_env_references(value: Any, missing: list[str], path: str = "", env: Mapping[str, str] | None = None) -> Any:
    """``value`` with every string ``os.environ/NAME`` replaced by ``$NAME``; unset ones appended to ``missing``."""
    env = os.environ if env is None else env
    if isinstance(value, str) and value.startswith(ENV_REFERENCE):
        name = value[len(ENV_REFERENCE):].strip()
        found = env.get(name) if name else None
        if found is None:
            where = path or "value"
            missing.append(f"{where} refers to environment variable {name!r} ({value}), which is not set"
                           if name else f"{where} is {value!r}: name a variable after {ENV_REFERENCE}")
        return found
    if isinstance(value, Mapping):
        return {k: resolve_env_references(v, missing, f"{path}.{k}" if path else str(k), env) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(resolve_env_references(v, missing, f"{path}[{i}]", env) for i, v in enumerate(value))
    return value


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, ``field.path: message``, without the values refused (they may be keys)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        where = ".".join(str(p) for p in error.get("loc", ()))
        message = str(error.get("msg", "invalid"))
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


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
    except ValidationError as exc:
        where = f"config {path}" if path is not None else "config"
        raise ConfigError(f"invalid {where}: {describe_validation_error(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}".replace("\n", " ")) from None
    finally:
        _config_file.reset(token)


@lru_cache(maxsize=1)
def get_config() -> ServingConfig:
    return load_config()
