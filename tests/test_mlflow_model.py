"""A registered router as MLflow tooling sees it: signature, batched predict with params,
``mlflow models serve``, and an environment rebuilt from the logged artifacts alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

from router.mlflow_model import INPUT_EXAMPLE, ModelParamsError, cost_column, p_column
from router.persist import load_router_file
from router.policy import Tradeoff
from tests.registry_fixtures import registered_champion
from tests.serving_fixtures import EASY, HARD, MODELS, router_path  # noqa: F401

URI = "models:/thrifty@champion"
PROMPTS = [EASY, HARD, "hello, tell me a recipe please", "prove Fermat's little theorem, step by step",
           "Be brief.\n\nhello, what time is it?", "prove that e is irrational with a rigorous proof"] * 5


@pytest.fixture(scope="module")
def champion(router_path, tmp_path_factory):  # noqa: F811
    with registered_champion(load_router_file(router_path), tmp_path_factory) as router:
        yield router


@pytest.fixture(scope="module")
def pyfunc(champion):
    return mlflow.pyfunc.load_model(URI)


def test_registered_router_declares_signature_example_and_its_environment(champion, tmp_path):
    info = mlflow.models.get_model_info(URI)
    signature = info.signature
    assert signature.inputs.input_names() == ["prompt"]
    assert {p.name for p in signature.params.params} == {
        "policy", "knob", "profile", "allowed_models", "min_quality", "max_cost", "prices"}
    outputs = signature.outputs.input_names()
    assert outputs[:3] == ["model", "p_success", "expected_cost"]
    assert {p_column(m) for m in champion.models_} | {cost_column(m) for m in champion.models_} <= set(outputs)

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=URI, dst_path=str(tmp_path)))
    example = mlflow.models.Model.load(str(local)).load_input_example(str(local))
    assert list(example["prompt"]) == INPUT_EXAMPLE
    # the project's packages travel with the model: nothing needs thrifty to be installable
    assert (local / "code" / "router" / "router.py").is_file() and (local / "code" / "models" / "catalog.yaml").is_file()
    requirements = (local / "requirements.txt").read_text().split()
    assert not [r for r in requirements if r.lower().startswith("thrifty")]
    pins = dict(r.split("==") for r in requirements)
    for dist, version in pins.items():
        assert metadata.version(dist) == version  # pinned to what is installed here
    assert {"lightgbm", "scikit-learn", "numpy", "pandas", "bpe-openai", "mlflow"} <= {d.lower() for d in pins}


def test_predict_scores_the_batch_once_and_decides_like_route(champion, pyfunc, monkeypatch):
    model = pyfunc.unwrap_python_model()
    calls = []
    score = model.router.score
    monkeypatch.setattr(model.router, "score", lambda *a, **k: calls.append(len(a[0])) or score(*a, **k))
    allowed = ["oai-mini", "claude-large", "oai-large"]
    params = {"policy": "tradeoff", "knob": 200.0, "allowed_models": allowed, "max_cost": 0.002}
    out = pyfunc.predict(pd.DataFrame({"prompt": PROMPTS}), params=params)
    assert calls == [len(PROMPTS)]  # every prompt scored in one call
    assert len(out) == len(PROMPTS)
    for text, row in zip(PROMPTS, out.to_dict("records")):
        expected = champion.route(text, champion.prices_, Tradeoff(200.0), allowed=allowed, max_cost=0.002)
        assert (row["model"], row["fallback"], row["policy"], row["knob"]) == (expected.model, expected.fallback, "tradeoff", 200.0)
        assert row["p_success"] == pytest.approx(expected.chosen.p_success)
        assert row["expected_cost"] == pytest.approx(expected.chosen.expected_cost)
        for c in expected.candidates:
            assert row[p_column(c.model)] == pytest.approx(c.p_success)
            assert row[cost_column(c.model)] == pytest.approx(c.expected_cost)
        assert np.isnan(row[p_column("claude-small")]) and np.isnan(row[cost_column("claude-small")])

    bounded = pyfunc.predict(pd.DataFrame({"prompt": PROMPTS}), params={"min_quality": 0.9, "max_cost": 0.0005})
    expected = [champion.route(t, champion.prices_, min_quality=0.9, max_cost=0.0005) for t in PROMPTS]
    assert list(bounded["model"]) == [d.model for d in expected]
    assert list(bounded["fallback"]) == [d.fallback for d in expected]
    assert any(d.fallback for d in expected) and not all(d.fallback for d in expected)

    default = pyfunc.predict(pd.DataFrame({"prompt": PROMPTS[:2]}))
    assert list(default["model"]) == [champion.route(t, champion.prices_).model for t in PROMPTS[:2]]
    assert list(default["model"]) == ["oai-mini", "claude-large"]
    # prices given with the request change the expected costs (and so what is cheapest)
    dear_mini = pyfunc.predict(pd.DataFrame({"prompt": [EASY]}), params={"prices": json.dumps({"oai-mini": [50, 200]})})
    assert dear_mini.loc[0, "model"] != "oai-mini"


def test_profile_param_applies_a_tuned_profile(champion, pyfunc):
    from models.settings import get_settings
    from router.profiles import Profile, save_profile

    save_profile(Profile(name="cheap-only", policy="threshold", knob=0.5, allowed=["oai-mini", "claude-small"]),
                 get_settings().profiles_dir)
    out = pyfunc.predict(pd.DataFrame({"prompt": [HARD]}), params={"profile": "cheap-only"})
    assert out.loc[0, "model"] in ("oai-mini", "claude-small") and out.loc[0, "knob"] == 0.5
    assert np.isnan(out.loc[0, p_column("claude-large")])


@pytest.mark.parametrize(
    "params, message",
    [
        ({"policy": "cheapest", "knob": 1.0}, "param 'policy' is 'cheapest'"),
        ({"policy": "tradeoff"}, "param 'knob' is needed with policy 'tradeoff'"),
        ({"allowed_models": ["gpt-9"]}, r"model\(s\) \['gpt-9'\] are not known"),
        ({"max_cost": -1.0}, "param 'max_cost' must be a finite number >= 0"),
        ({"prices": "{not json"}, "param 'prices' must be a JSON object"),
        ({"profile": "nope"}, "param 'profile': no profile 'nope'"),
        ({"profile": "nope", "policy": "threshold"}, "param 'profile' sets the policy"),
    ],
)
def test_bad_params_are_named(pyfunc, params, message):
    with pytest.raises(ModelParamsError, match=message):
        pyfunc.predict(pd.DataFrame({"prompt": [EASY]}), params=params)


def test_bad_input_is_named(pyfunc):
    from router.mlflow_model import predict_frame

    router = pyfunc.unwrap_python_model().router
    with pytest.raises(ModelParamsError, match="no 'prompt' column"):
        predict_frame(router, pd.DataFrame({"text": [EASY]}))
    with pytest.raises(ModelParamsError, match="input row 1: 'prompt' is missing"):
        predict_frame(router, pd.DataFrame({"prompt": [EASY, None]}))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_invocations(champion, tmp_path):
    from models.settings import get_settings

    port = _free_port()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "MLFLOW_TRACKING_URI": get_settings().resolved_tracking_uri,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [str(bin_dir / "mlflow"), "models", "serve", "-m", URI, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"mlflow models serve exited: {(tmp_path / 'serve.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 120 s"
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        body = {"dataframe_split": {"columns": ["prompt"], "data": [[EASY], [HARD]]},
                "params": {"allowed_models": ["oai-mini", "claude-large"]}}
        answer = httpx.post(f"{url}/invocations", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        rows = json.loads(answer.text)["predictions"]  # NaN columns: Python's json reads them
        for text, row in zip((EASY, HARD), rows):
            expected = champion.route(text, champion.prices_, allowed=["oai-mini", "claude-large"])
            assert row["model"] == expected.model and row["p_success"] == pytest.approx(expected.chosen.p_success)
        assert [r["model"] for r in rows] == ["oai-mini", "claude-large"]
        bad = httpx.post(f"{url}/invocations", json={**body, "params": {"policy": "cheapest", "knob": 1}}, timeout=30)
        assert bad.status_code == 400 and "param 'policy' is 'cheapest'" in bad.text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_logged_environment_is_complete(champion, tmp_path):
    """The model loads and predicts in a Python that sees only the logged requirements
    (and what they declare they need) plus the logged code: no thrifty, no other package.

    Offline and fast: the requirements' installed files are linked into an empty
    folder, and a ``python -I -S`` (no site-packages, no project checkout) imports from it.
    """
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=URI, dst_path=str(tmp_path / "model")))
    requirements = [r for r in (local / "requirements.txt").read_text().split() if r]
    site = tmp_path / "site"
    linked = _link_distributions(requirements, site)
    assert "thrifty" not in linked
    needed = _third_party_imports(local / "code")
    assert {"lightgbm", "sklearn", "numpy", "bpe_openai"} <= needed
    script = f"""
import sys
sys.path.insert(0, {str(site)!r})
try:
    import router
except ImportError:
    pass
else:
    raise SystemExit("router importable before the model's code is on the path: " + router.__file__)
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model({str(local)!r})
import router, models
assert router.__file__.startswith({str(local)!r}), router.__file__
import pkgutil, importlib
for package in (router, models):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
for name in {sorted(needed)!r}:  # imported lazily, inside functions, too
    importlib.import_module(name)
out = model.predict(pd.DataFrame({{"prompt": {INPUT_EXAMPLE!r}}}))
print(list(out["model"]))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_TRACKING"))}
    result = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(list(champion.route(t, champion.prices_).model for t in INPUT_EXAMPLE))


def _third_party_imports(code: Path) -> set[str]:
    """Top-level modules named in any import line of the logged code that resolve here to a
    non-stdlib, non-project module (found independently of router.mlflow_model's own scan)."""
    import importlib.util
    import re

    own = {p.name for p in code.iterdir()}
    names = set()
    for file in code.rglob("*.py"):
        names |= set(re.findall(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", file.read_text(), re.MULTILINE))
    return {n for n in names - own - set(sys.stdlib_module_names) if n != "__future__" and importlib.util.find_spec(n)}


def _link_distributions(requirements: list[str], site: Path) -> set[str]:
    """Symlink into ``site`` every installed file of the requirements and their transitive requirements."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    site.mkdir(parents=True)
    seen: set[str] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        key = name + ("[" + ",".join(sorted(extras)) + "]" if extras else "")
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(requirement.name)
        for sub in dist.requires or []:
            for wanted in [""] + sorted(extras):
                todo.append((Requirement(sub), wanted))
        assert dist.files is not None, f"{requirement.name}: installed without a file list"
        for top in {f.parts[0] for f in dist.files if f.parts[0] != ".."}:
            target = site / top
            if not target.exists():
                target.symlink_to(dist.locate_file(top))
    return {k.split("[")[0] for k in seen}
