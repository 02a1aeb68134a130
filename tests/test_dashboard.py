"""The savings dashboard in a real headless Chromium (Debian's chromium and chromedriver, driven by selenium).

Traffic goes through the real SDKs to thrifty and the fake provider on
loopback, with feedback; the test then reads the outcome store itself (SQLite,
its own SQL) and computes every figure independently: spend, the
counterfactual on the baseline, success and its Wilson interval, USD per
success, fail-overs. The page must show the same numbers (``data-value`` of
each figure), after a browser sign-in through the login form; the exported log
rendered by ``thrifty report --html`` must show them too.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from tests.fakes.server import ThreadedServer
from tests.serving_fixtures import (  # noqa: F401  (fixtures)
    CLIENT_KEY,
    EASY,
    HARD,
    OTHER_CLIENT_KEY,
    PRICES,
    UPSTREAM,
    fake,
    fake_server,
    make_config,
    openai_sdk,
    router_path,
)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1280,1400"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
        "Chromium and its driver are needed: apt-get install -y chromium chromium-driver (scripts/test.sh does it as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(fake_server, router_path, tmp_path_factory):
    """thrifty with some traffic: routed requests in both formats, a fail-over, feedback on most of them."""
    from serving.app import create_app

    fake_provider, fake_url = fake_server
    fake_provider.reset()
    tmp = tmp_path_factory.mktemp("dashboard")
    config = make_config(tmp, fake_url, router_path, admin_keys=["tests"])
    app = create_app(config)
    server = ThreadedServer(app).start()
    started = time.time()
    fake_provider.configure(UPSTREAM["oai-mini"], status=503, fail_times=2)  # the first easy request fails over
    with openai_sdk(server.url) as client, httpx.Client(base_url=server.url, timeout=20,
                                                        headers={"authorization": f"Bearer {CLIENT_KEY}"}) as http:
        for i in range(14):
            prompt = f"{EASY if i % 2 == 0 else HARD} (case {i})"
            raw = client.chat.completions.with_raw_response.create(
                model="thrifty", stream=i % 5 == 4, messages=[{"role": "user", "content": prompt}])
            if i % 5 == 4:
                for _ in raw.parse():
                    pass
            if i % 4 != 3:  # a few are left without feedback
                outcome = {"success": float(i % 3 != 0)} if i % 7 else {"score": 0.5}
                http.post("/v1/feedback", json={"decision_id": raw.headers["x-thrifty-decision-id"], "source": "test", **outcome})
    fake_provider.reset()
    yield server.url, app.state.services, config, started, time.time() + 1
    server.stop()


def expected_figures(store_path: Path, baseline: str | None = None) -> dict:
    """The report's figures computed from the store's rows, independently of serving.report."""
    conn = sqlite3.connect(store_path)
    conn.row_factory = sqlite3.Row
    decisions = [dict(r) for r in conn.execute("SELECT * FROM decisions WHERE status = 'ok' ORDER BY ts")]
    feedback = {}
    for r in conn.execute("SELECT decision_id, success FROM feedback ORDER BY id"):
        feedback[r["decision_id"]] = r["success"]  # the latest counts
    attempts = {}
    for r in conn.execute("SELECT decision_id, model, status FROM attempts ORDER BY decision_id, n"):
        attempts.setdefault(r["decision_id"], []).append(r["model"])
    conn.close()
    candidates = [{c["model"]: c for c in json.loads(d["candidates"])} for d in decisions]
    if baseline is None:
        means = {m: sum(c[m]["p_success"] for c in candidates) / len(candidates) for m in candidates[0]}
        baseline = max(means, key=lambda m: (means[m], -sum(PRICES[m])))
    price_in, price_out = PRICES[baseline]
    spend = sum(d["cost_usd"] for d in decisions)
    counterfactual = sum((d["input_tokens"] * price_in + c[baseline]["expected_output_tokens"] * price_out) / 1e6
                         for d, c in zip(decisions, candidates))
    rated = [d for d in decisions if d["decision_id"] in feedback]
    successes = sum(feedback[d["decision_id"]] for d in rated)
    n = len(rated)
    p = successes / n
    z = 1.959963984540054
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {
        "requests": len(decisions), "baseline": baseline, "spend": spend, "counterfactual": counterfactual,
        "savings": counterfactual - spend, "success": p, "low": centre - half, "high": centre + half, "rated": n,
        "usd-per-success": sum(d["cost_usd"] for d in rated) / successes,
        "failovers": sum(1 for d in decisions if attempts[d["decision_id"]][0] != d["answered_model"]),
        "latency": _percentile([d["decision_latency_s"] for d in decisions], 50) * 1000,
        "novelty": sum(d["novelty"] for d in decisions) / len(decisions),
    }


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    return ordered[low] + (ordered[min(low + 1, len(ordered) - 1)] - ordered[low]) * (rank - low)


def figures(driver) -> dict:
    from selenium.webdriver.common.by import By

    out = {}
    for ident in ("spend", "counterfactual", "savings", "success", "usd-per-success", "failovers", "latency", "novelty"):
        element = driver.find_element(By.ID, ident)
        out[ident] = float(element.get_attribute("data-value"))
        if ident == "success":
            out["low"], out["high"] = float(element.get_attribute("data-low")), float(element.get_attribute("data-high"))
            out["rated"] = int(element.get_attribute("data-rated"))
    return out


def assert_same(shown: dict, expected: dict) -> None:
    for key, value in shown.items():
        assert value == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key


def test_the_dashboard_shows_the_stores_numbers_after_a_browser_sign_in(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, services, config, started, ended = served
    expected = expected_figures(config.resolved_store_url)
    assert expected["requests"] == 14 and expected["failovers"] >= 1 and 0 < expected["rated"] < 14

    browser.delete_all_cookies()
    browser.get(f"{url}/dashboard?since={started - 60}&until={ended}")
    form = browser.find_element(By.ID, "login")  # not signed in: the sign-in form, no figures
    assert not browser.find_elements(By.ID, "spend")
    form.find_element(By.NAME, "key").send_keys(CLIENT_KEY)
    form.submit()
    browser.find_element(By.ID, "spend")
    browser.get(f"{url}/dashboard?since={started - 60}&until={ended}")
    shown = figures(browser)
    assert_same(shown, expected)
    assert expected["baseline"] in browser.find_element(By.TAG_NAME, "body").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#models tbody tr")
    assert sum(int(r.find_element(By.CLASS_NAME, "requests").text.replace(",", "")) for r in rows) == 14
    assert browser.find_elements(By.CSS_SELECTOR, "#share-chart rect") and browser.find_elements(By.CSS_SELECTOR, "#spend-chart polyline")

    cookie = browser.get_cookie("thrifty_dashboard")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
    assert CLIENT_KEY not in browser.page_source and CLIENT_KEY not in cookie["value"]
    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

    # a chosen baseline: the counterfactual changes accordingly
    browser.get(f"{url}/dashboard?since={started - 60}&until={ended}&baseline=oai-large")
    assert_same(figures(browser), expected_figures(config.resolved_store_url, "oai-large"))


def test_a_period_without_traffic_says_so_and_a_failure_is_an_error_not_a_blank_page(served, browser):
    from selenium.webdriver.common.by import By

    url, services, config, *_ = served
    browser.get(f"{url}/dashboard?days=1")  # signs in again if the cookie is gone
    if browser.find_elements(By.ID, "login"):
        form = browser.find_element(By.ID, "login")
        form.find_element(By.NAME, "key").send_keys(CLIENT_KEY)
        form.submit()
        browser.find_element(By.ID, "spend")
    browser.get(f"{url}/dashboard?since=2001-01-01&until=2001-01-08")
    assert browser.find_element(By.ID, "no-traffic").text == "no traffic in this period"

    browser.get(f"{url}/dashboard?baseline=no-such-model")
    assert "no-such-model" in browser.find_element(By.ID, "error").text
    browser.get(f"{url}/dashboard?since=yesterday")
    assert "since must be a date" in browser.find_element(By.ID, "error").text

    from models.store import StoreUnavailableError

    def unreadable(**kw):
        raise StoreUnavailableError("the store went away")

    services.store.joined = unreadable  # the store cannot be read (an instance attribute shadows the method)
    try:
        browser.get(f"{url}/dashboard?days=1")
        assert "reading the outcome store failed" in browser.find_element(By.ID, "error").text
    finally:
        del services.store.joined


def test_only_valid_admin_keys_reach_the_dashboard(served):
    url, *_ = served

    def get(**kw):
        return httpx.get(f"{url}/dashboard", timeout=20, **kw)

    def login(key):
        return httpx.post(f"{url}/dashboard/login", data={"key": key}, timeout=20)

    assert get().status_code == 401
    assert get(headers={"authorization": f"Bearer {CLIENT_KEY}"}).status_code == 200
    assert get(headers={"authorization": f"Bearer {OTHER_CLIENT_KEY}"}).status_code == 403  # not in admin_keys
    wrong = login("thr-wrong-key-000000")
    assert wrong.status_code == 401 and "not a router API key" in wrong.text and "thr-wrong" not in wrong.text
    assert login(OTHER_CLIENT_KEY).status_code == 403
    ok = login(CLIENT_KEY)
    assert ok.status_code == 303 and "HttpOnly" in ok.headers["set-cookie"] and CLIENT_KEY not in ok.headers["set-cookie"]
    genuine = ok.cookies["thrifty_dashboard"]
    forged = genuine[:-4] + ("0000" if not genuine.endswith("0000") else "1111")  # a signature that does not match
    assert get(cookies={"thrifty_dashboard": forged}).status_code == 401
    assert get(cookies={"thrifty_dashboard": genuine.replace("tests|", "other|", 1)}).status_code == 401  # another client's name
    assert get(cookies={"thrifty_dashboard": genuine}).status_code == 200


def test_thrifty_report_renders_the_same_numbers_from_an_exported_log(served, browser, tmp_path):
    from thrifty.cli import main

    url, services, config, started, ended = served
    exported = tmp_path / "served.parquet"
    runner = CliRunner()
    result = runner.invoke(main, ["logs", "export", "--store", str(config.resolved_store_url), "--out", str(exported),
                                  "--include-unlabeled"])
    assert result.exit_code == 0, result.output
    catalog = config.catalog[0]
    page = tmp_path / "report.html"
    result = runner.invoke(main, ["report", "--html", str(page), "--logs", str(exported), "--catalog", str(catalog), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    expected = expected_figures(config.resolved_store_url)
    assert summary["baseline"] == expected["baseline"] and summary["requests"] == 14
    assert summary["spend"] == pytest.approx(expected["spend"]) and summary["counterfactual"] == pytest.approx(expected["counterfactual"])
    browser.get(page.as_uri())
    assert_same(figures(browser), expected)
    assert browser.save_screenshot(str(tmp_path / "report.png"))


def test_the_report_needs_the_served_columns(tmp_path):
    import pandas as pd

    from thrifty.cli import main

    pd.DataFrame({"model": ["a"], "success": [1.0]}).to_parquet(tmp_path / "x.parquet")
    result = CliRunner().invoke(main, ["report", "--html", str(tmp_path / "r.html"), "--logs", str(tmp_path / "x.parquet")])
    assert result.exit_code == 1 and "lack the column(s) ts" in result.output


def test_screenshot_for_the_docs_is_committed():
    docs = Path(__file__).resolve().parents[1] / "docs" / "dashboard.png"
    assert docs.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "docs/dashboard.png" in readme
