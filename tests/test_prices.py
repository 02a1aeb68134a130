"""Catalog prices from maintained sources (genai-prices, LiteLLM's cost map) and `thrifty models prices`."""

from __future__ import annotations

import os
from decimal import Decimal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # if litellm is imported here: no network fetch

import pytest  # noqa: E402
import yaml  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from models.catalog import CatalogError, default_catalog, load_catalog  # noqa: E402
from models.price_sources import (  # noqa: E402
    PRICE_SOURCES,
    GenaiPrices,
    LiteLLMCostMap,
    PriceSourceUnavailable,
    SourcePrice,
    UnknownPriceSourceError,
    _version,
    compare_prices,
    get_price_source,
)
from thrifty.cli import main  # noqa: E402


class FixedPrices:
    """A price source that knows two models at prices no catalog uses."""

    name = "fixed"
    version = "test"
    PRICES = {"gpt-4o": (1.25, 5.5), "claude-3-haiku": (0.125, 0.625)}

    def price(self, spec):
        if spec.id not in self.PRICES:
            return None
        return SourcePrice(*self.PRICES[spec.id], f"fixed:{spec.id}")


@pytest.fixture
def fixed_source(monkeypatch):
    monkeypatch.setitem(PRICE_SOURCES, "fixed", FixedPrices)
    return FixedPrices


def test_source_prices_replace_the_shipped_ones_and_files_still_override(fixed_source, tmp_path, monkeypatch, thrifty_home):
    shipped = default_catalog()
    catalog = load_catalog(price_source="fixed")
    assert catalog.get("gpt-4o").price.input_usd_per_mtok == 1.25 and catalog.get("gpt-4o").output_usd_per_mtok == 5.5
    assert catalog.get("claude-3-haiku").input_usd_per_mtok == 0.125
    assert catalog.get("gpt-4o-mini").price == shipped.get("gpt-4o-mini").price  # unknown to the source: unchanged
    override = tmp_path / "mine.yaml"
    override.write_text(yaml.safe_dump({"models": [{"id": "gpt-4o", "input_usd_per_mtok": 9.0}]}))
    catalog = load_catalog([override], price_source="fixed")
    assert catalog.get("gpt-4o").input_usd_per_mtok == 9.0  # the user's file wins
    assert catalog.get("gpt-4o").output_usd_per_mtok == 5.5  # fields it does not give keep the source's
    # the setting chooses the source when none is passed; unset, the shipped prices stand
    assert load_catalog().get("gpt-4o").price == shipped.get("gpt-4o").price
    monkeypatch.setenv("THRIFTY_PRICE_SOURCE", "fixed")
    from models.settings import get_settings

    get_settings.cache_clear()
    assert load_catalog().get("gpt-4o").input_usd_per_mtok == 1.25
    monkeypatch.setenv("THRIFTY_PRICE_SOURCE", "nope")
    get_settings.cache_clear()
    with pytest.raises(CatalogError, match="THRIFTY_PRICE_SOURCE.*unknown price source 'nope'"):
        load_catalog()


def test_genai_prices_on_the_shipped_catalog():
    """Every price the source reports is what genai-prices itself computes for that model."""
    from genai_prices import Usage, calc_price

    source = GenaiPrices()
    found = 0
    for spec in default_catalog():
        price = source.price(spec)
        if price is None:
            continue
        found += 1
        provider, model = price.ref.split(":", 1)
        million_in = calc_price(Usage(input_tokens=1_000_000, output_tokens=0), model, provider_id=provider)
        million_out = calc_price(Usage(input_tokens=0, output_tokens=1_000_000), model, provider_id=provider)
        assert Decimal(str(price.input_usd_per_mtok)) == million_in.input_price
        assert Decimal(str(price.output_usd_per_mtok)) == million_out.output_price
    assert found >= len(default_catalog()) - 1  # all but the local model, which no price table knows


def test_litellm_cost_map_agrees_with_litellms_own_cost_function():
    import litellm

    source = LiteLLMCostMap()
    checked = 0
    for spec in default_catalog():
        price = source.price(spec)
        if price is None:
            continue
        key = price.ref.split(":", 1)[1]
        prompt_cost, completion_cost = litellm.cost_per_token(model=key, prompt_tokens=1_000_000, completion_tokens=1_000_000)
        assert price.input_usd_per_mtok == pytest.approx(prompt_cost, rel=1e-9)
        assert price.output_usd_per_mtok == pytest.approx(completion_cost, rel=1e-9)
        checked += 1
    assert checked >= 6


def test_prices_check_lists_each_disagreement_of_the_shipped_catalog():
    runner = CliRunner()
    result = runner.invoke(main, ["models", "prices", "--check", "--source", "genai-prices"])
    assert result.exit_code == 0, result.output
    disagreements, unknown = compare_prices(default_catalog(), GenaiPrices())
    from importlib import resources

    shipped = {e["id"]: e for e in yaml.safe_load(resources.files("models").joinpath("catalog.yaml").read_text())["models"]}
    lines = result.output.splitlines()
    for d in disagreements:
        assert d.catalog == shipped[d.model][d.field]  # the value in the shipped file
        assert d.catalog != pytest.approx(d.source)
        assert any(line.split()[:4] == [d.model, d.field, f"{d.catalog:g}", f"{d.source:g}"] for line in lines), result.output
    assert f"{len(disagreements)} price(s) differ" in result.output if disagreements else "known prices agree" in result.output
    if unknown:
        assert f"not in genai-prices: {', '.join(unknown)}" in result.output
    strict = runner.invoke(main, ["models", "prices", "--check", "--strict", "--source", "genai-prices"])
    assert strict.exit_code == (1 if disagreements else 0)


class ShippedPrices:
    """A price source that agrees with the shipped catalog on every model."""

    name = "shipped"
    version = "test"

    def price(self, spec):
        return SourcePrice(spec.input_usd_per_mtok, spec.output_usd_per_mtok, f"shipped:{spec.id}")


def test_prices_check_strict_fails_only_on_disagreement(fixed_source, monkeypatch):
    monkeypatch.setitem(PRICE_SOURCES, "shipped", ShippedPrices)
    runner = CliRunner()
    disagreeing = runner.invoke(main, ["models", "prices", "--check", "--strict", "--source", "fixed"])
    assert disagreeing.exit_code == 1
    assert "4 price(s) differ" in disagreeing.output  # gpt-4o and claude-3-haiku, input and output each
    rows = [line.split() for line in disagreeing.output.splitlines()[2:6]]
    assert ["gpt-4o", "input_usd_per_mtok", "2.5", "1.25", "fixed:gpt-4o"] in rows
    assert ["claude-3-haiku", "output_usd_per_mtok", "1.25", "0.625", "fixed:claude-3-haiku"] in rows
    assert runner.invoke(main, ["models", "prices", "--check", "--source", "fixed"]).exit_code == 0  # only when asked
    agreeing = runner.invoke(main, ["models", "prices", "--check", "--strict", "--source", "shipped"])
    assert agreeing.exit_code == 0 and f"all {len(default_catalog())} known prices agree" in agreeing.output


def test_errors_are_one_line():
    runner = CliRunner()
    result = runner.invoke(main, ["models", "prices", "--strict"])
    assert result.exit_code == 2 and "--strict applies to --check" in result.output
    result = runner.invoke(main, ["models", "prices", "--check", "--source", "nope"])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        f"Error: unknown price source 'nope'; expected one of {sorted(PRICE_SOURCES)}"]
    with pytest.raises(UnknownPriceSourceError, match="unknown price source 'x'; expected one of"):
        get_price_source("x")
    with pytest.raises(PriceSourceUnavailable, match=r"needs the no-such-dist package \(pip install no-such-dist\)"):
        _version("no-such-dist", "test")


def test_prices_lists_the_prices_in_force_and_where_they_come_from(tmp_path, thrifty_home):
    override = tmp_path / "mine.yaml"
    override.write_text(yaml.safe_dump({"models": [{"id": "gpt-4o", "input_usd_per_mtok": 9.0, "output_usd_per_mtok": 30.0}]}))
    result = CliRunner().invoke(main, ["models", "prices", "--source", "genai-prices", "--catalog", str(override)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert rows["gpt-4o"][1:4] == ["9", "30", "catalog"]
    assert rows["gpt-4o-mini"][3] == "genai-prices"
    assert rows["qwen2.5-7b-local"][3] == "catalog"
