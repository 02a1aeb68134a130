"""The model catalog: shipped entries, user overrides, prices CSVs, costs and token counts."""

import pytest

from models import CatalogError, UnknownModelError, load_catalog
from models.catalog import Catalog, read_prices_csv
from models.tokens import count_tokens


def test_shipped_catalog_has_both_providers_and_prices():
    catalog = load_catalog()
    providers = {spec.provider for spec in catalog}
    assert {"openai", "anthropic", "openai-compatible"} <= providers
    mini = catalog.get("gpt-4o-mini")
    assert mini.input_usd_per_mtok == 0.15 and mini.output_usd_per_mtok == 0.6
    assert mini.context_window == 128000


def test_unknown_model_is_a_key_error_with_suggestions():
    catalog = load_catalog()
    with pytest.raises(UnknownModelError) as err:
        catalog.get("gpt-4o-mnii")
    assert isinstance(err.value, KeyError)
    assert "gpt-4o-mnii" in str(err.value) and "gpt-4o-mini" in str(err.value)


def test_cost_of_a_call_from_usage():
    spec = load_catalog().get("gpt-4o")
    # 1000 input tokens at $2.5/M plus 500 output tokens at $10/M
    assert spec.cost(1000, 500) == pytest.approx(0.0025 + 0.005)


def test_user_file_overrides_fields_and_adds_models(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text(
        "models:\n"
        "  - {id: gpt-4o, input_usd_per_mtok: 2.0}\n"
        "  - {id: my-vllm, provider: openai-compatible, upstream: Qwen/Qwen2.5-7B, base_url: 'http://127.0.0.1:8000/v1',"
        " input_usd_per_mtok: 0.05, output_usd_per_mtok: 0.1, context_window: 32768}\n"
    )
    catalog = load_catalog([user])
    assert catalog.get("gpt-4o").input_usd_per_mtok == 2.0
    assert catalog.get("gpt-4o").output_usd_per_mtok == 10.0  # untouched field kept
    assert catalog.get("my-vllm").base_url == "http://127.0.0.1:8000/v1"
    assert catalog.get("my-vllm").wire_format == "openai"
    assert len(catalog) == len(load_catalog()) + 1


def test_json_catalog_without_default(tmp_path):
    user = tmp_path / "only.json"
    user.write_text('[{"id": "a", "provider": "anthropic", "upstream": "claude-x", "input_usd_per_mtok": 1, "output_usd_per_mtok": 5}]')
    catalog = load_catalog([user], include_default=False)
    assert catalog.ids == ["a"] and catalog.get("a").wire_format == "anthropic"


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{id: x, provider: openai, input_usd_per_mtok: 1}", "missing field 'output_usd_per_mtok'"),
        ("{id: x, provider: grpc, input_usd_per_mtok: 1, output_usd_per_mtok: 1}", "field 'provider'"),
        ("{id: x, provider: openai, input_usd_per_mtok: -1, output_usd_per_mtok: 1}", "'input_usd_per_mtok' must be a finite number >= 0"),
        ("{id: x, provider: openai, input_usd_per_mtok: cheap, output_usd_per_mtok: 1}", "'input_usd_per_mtok' is not a number"),
        ("{id: x, provider: openai, input_usd_per_mtok: 1, output_usd_per_mtok: 1, colour: red}", "unknown field(s) ['colour']"),
        ("{id: x, provider: openai, input_usd_per_mtok: 1, output_usd_per_mtok: 1, context_window: big}", "'context_window' is not an integer"),
        ("{provider: openai}", "missing field 'id'"),
    ],
)
def test_bad_catalog_entries_name_file_entry_and_field(tmp_path, entry, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"models:\n  - {{id: ok, provider: openai, input_usd_per_mtok: 1, output_usd_per_mtok: 2}}\n  - {entry}\n")
    with pytest.raises(CatalogError) as err:
        load_catalog([path])
    text = str(err.value)
    assert str(path) in text and "entry 1" in text and message in text


def test_malformed_yaml_is_a_catalog_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("models: [ {id: x\n")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog([path])


def test_prices_csv_of_shared_data_loads_as_catalog_entries(data_dir):
    catalog = load_catalog([data_dir / "prices.csv"])
    sonnet = catalog.get("claude-3-5-sonnet-20240620")
    assert sonnet.provider == "anthropic" and sonnet.output_usd_per_mtok == 15.0
    athene = catalog.get("Athene-70B")
    assert athene.provider == "openai-compatible" and athene.vendor == "together"
    assert len(read_prices_csv(data_dir / "prices.csv")) == 92


def test_bad_prices_csv_names_line_and_column(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("model,provider,input_usd_per_mtok,output_usd_per_mtok,note\nm1,openai,1,2,\nm2,openai,abc,2,\n")
    with pytest.raises(CatalogError) as err:
        load_catalog([path])
    assert f"{path}: line 3: column 'input_usd_per_mtok' is not a number" in str(err.value)


def test_prices_csv_missing_column(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("model,provider,input_usd_per_mtok\nm1,openai,1\n")
    with pytest.raises(CatalogError, match=r"missing column\(s\) \['output_usd_per_mtok'\]"):
        load_catalog([path])


def test_price_table_is_the_explicit_cost_argument():
    catalog = Catalog().merged([{"id": "a", "provider": "openai", "input_usd_per_mtok": 1, "output_usd_per_mtok": 3}], "test")
    table = catalog.prices()
    inp, out = table.arrays(["a"])
    assert inp[0] == pytest.approx(1e-6) and out[0] == pytest.approx(3e-6)
    with pytest.raises(KeyError, match="no price for model"):
        table.arrays(["b"])


def test_offline_token_counts_use_the_shipped_o200k_vocabulary():
    assert count_tokens("") == 0
    assert count_tokens("hello world") == 2
    # special-token text in user content is counted as plain text, not rejected
    assert count_tokens("<|endoftext|>") > 1
    assert count_tokens("hello world", "cl100k_base") == 2
