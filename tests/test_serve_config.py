"""The server's configuration: ``os.environ/NAME`` references, errors that name the key and never print a secret,
and the lines the server logs when it starts."""

from __future__ import annotations

import logging

import pytest
import yaml
from click.testing import CliRunner

from serving.config import ConfigError, load_config
from tests.serving_fixtures import CLIENT_KEY, fake, fake_server, make_config, router_path  # noqa: F401  (fixtures)

SECRET = "thr-SECRET-client-key-77aa88bb"


def write(tmp_path, data: dict):
    path = tmp_path / "thrifty.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_environment_references_are_resolved_at_load(tmp_path, monkeypatch):
    monkeypatch.setenv("APP_KEY", SECRET)
    monkeypatch.setenv("UPSTREAM_KEY", "sk-upstream-from-env-123456")
    monkeypatch.setenv("UPSTREAM_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("DAILY_BUDGET", "2.5")
    path = write(tmp_path, {
        "api_keys": {"app": "os.environ/APP_KEY"},
        "upstreams": {"openai": {"api_key": "os.environ/UPSTREAM_KEY", "base_url": "os.environ/UPSTREAM_URL"}},
        "budgets": {"app": {"amount_usd": "os.environ/DAILY_BUDGET", "period": "day"}},
    })
    config = load_config(path)
    assert config.client_keys() == {SECRET: "app"}
    assert config.upstreams["openai"].resolved_key() == "sk-upstream-from-env-123456"
    assert config.upstreams["openai"].base_url == "http://127.0.0.1:9/v1"
    assert config.budgets["app"].amount_usd == 2.5
    literal = write(tmp_path, {"api_keys": {"app": "os-environ-is-not-a-reference"}})
    assert load_config(literal).client_keys() == {"os-environ-is-not-a-reference": "app"}


def test_a_missing_variable_is_a_start_up_error_naming_the_key_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    monkeypatch.delenv("ALSO_NOT_SET", raising=False)
    path = write(tmp_path, {"api_keys": {"app": "os.environ/NOT_SET_ANYWHERE"},
                            "upstreams": {"anthropic": {"base_url": "os.environ/ALSO_NOT_SET"}}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "api_keys.app refers to environment variable 'NOT_SET_ANYWHERE'" in message
    assert "upstreams.anthropic.base_url refers to environment variable 'ALSO_NOT_SET'" in message
    assert "\n" not in message

    from thrifty.cli import main

    result = CliRunner().invoke(main, ["serve", "--config", str(path)])
    assert result.exit_code != 0 and "NOT_SET_ANYWHERE" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("data, names", [
    ({"api_keys": {"a": "thr-abc", "b": SECRET}}, "api_keys"),  # a key too short, beside a valid one
    ({"api_keys": {"a": SECRET}, "budgets": {"nobody": {"amount_usd": 1}}}, "budgets"),
    ({"api_keys": {"a": SECRET}, "admin_keys": ["nobody"]}, "admin_keys"),
    ({"api_keys": {"a": SECRET}, "upstreams": {"openai": {"api_key": SECRET, "colour": "red"}}}, "colour"),
    ({"api_keys": {"a": SECRET}, "port": "not-a-port"}, "port"),
])
def test_config_errors_name_the_field_and_never_print_a_secret(data, names, tmp_path):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert names in message and SECRET not in message and "thr-abc" not in message and "input_value" not in message
    from thrifty.cli import main

    result = CliRunner().invoke(main, ["serve", "--config", str(path)])
    assert result.exit_code != 0 and SECRET not in result.output and "Traceback" not in result.output
    # the settings object itself, printed by pydantic, never shows them either
    from pydantic import ValidationError

    from serving.config import ServingConfig

    with pytest.raises(ValidationError) as raw:
        ServingConfig(**data)
    assert SECRET not in str(raw.value) and "thr-abc" not in str(raw.value)


def test_start_up_logs_one_line_and_names_the_variable_of_a_missing_key(fake_server, router_path, tmp_path, monkeypatch,
                                                                       caplog):
    """What is served (router version, routable models, store, address), and what to set for a keyless model."""
    from serving.app import create_app
    from tests.fakes.server import serve_in_thread
    from tests.serving_fixtures import catalog_entries

    monkeypatch.delenv("MISSING_PROVIDER_KEY", raising=False)
    entries = catalog_entries(fake_server[1])
    for entry in entries:
        if entry["id"] == "oai-large":
            entry["api_key_env"] = "MISSING_PROVIDER_KEY"
    catalog = tmp_path / "keyless.yaml"
    catalog.write_text(yaml.safe_dump({"models": entries}))
    config = make_config(tmp_path, fake_server[1], router_path, catalog=[catalog],
                         upstreams={"anthropic": {"api_key": "sk-ant-upstream-SECRET-5678"}}, port=8123)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    caplog.set_level(logging.INFO, logger="thrifty.serving")
    with serve_in_thread(create_app(config)):
        pass
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("thrifty serving router")]
    assert len(started) == 1
    line = started[0]
    assert "router router.joblib@" in line and "2 of 4 models routable (claude-small, claude-large)" in line
    assert config.resolved_store_url in line and "http://127.0.0.1:8123" in line
    missing = [r.getMessage() for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(missing) == 1  # one line, grouped by what is missing
    assert "MISSING_PROVIDER_KEY is not set (nor upstreams.openai.api_key): oai-large" in missing[0]
    assert "OPENAI_API_KEY is not set (nor upstreams.openai.api_key): oai-mini" in missing[0]
