"""Cascade replay on logged answers, the search on training prompts, and ``thrifty replay --cascades``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from router.cascade import Agreement, Cascade, FormatCheck, Stage
from training.cascades import (
    CascadeSearch,
    CascadeSearchError,
    LatencyProxy,
    cascade_data,
    infer_answer_kind,
    replay_cascades,
    run_cascade,
)
from training.dataset import OutcomeMatrix
from training.metrics import reference

# ----------------------------------------------------------------------------- a hand-built matrix

MODELS = ["a", "b", "c"]
ANSWERS = [
    ["1", "1.0", "2"],  # a and b agree: stop at stage 1, answered by b
    ["1", "2", "3"],  # disagree: c answers
    [None, "5", "5"],  # a gave no answer: b alone cannot agree; c answers
    ["x", "x", "7"],  # agree, but not numbers: the format check fails, so no agreement; c answers
]
SUCCESS = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [0, 0, 0]], dtype=float)
COST = np.array([[0.001, 0.002, 0.010], [0.002, 0.004, 0.020], [0.001, 0.003, 0.030], [0.001, 0.002, 0.040]])
OUT_TOKENS = np.array([[50, 100, 200], [25, 150, 300], [0, 100, 200], [50, 50, 100]], dtype=float)
IN_TOKENS = np.array([[10, 10, 10], [20, 20, 20], [30, 30, 30], [40, 40, 40]], dtype=float)


def hand_matrix(answers=ANSWERS, success=SUCCESS) -> OutcomeMatrix:
    n = len(answers)
    return OutcomeMatrix(
        prompt_keys=np.array([f"d/p{i}" for i in range(n)], dtype=object),
        datasets=np.array(["d"] * n, dtype=object),
        tasks=np.array(["t"] * n, dtype=object),
        texts=[f"prompt {i}" for i in range(n)],
        models=list(MODELS),
        success=np.asarray(success, dtype=float),
        input_tokens=IN_TOKENS[:n],
        output_tokens=OUT_TOKENS[:n],
        cost=COST[:n],
        answers=np.array(answers, dtype=object),
    )


PAIR_THEN_C = Cascade("pair", (Stage(("a", "b"), Agreement(2)), Stage(("c",))), "number")


def test_replay_cost_success_and_latency_by_hand():
    data = cascade_data(hand_matrix(), None, "number", LatencyProxy(overhead_s=0.5, tokens_per_s=50.0))
    out = run_cascade(PAIR_THEN_C, data)
    assert out.stop.tolist() == [0, 1, 1, 1]
    assert [MODELS[j] for j in out.answered] == ["b", "c", "c", "c"]
    assert [[MODELS[j] for j in called] for called in out.called] == [["a", "b"], ["a", "b", "c"], ["a", "b", "c"], ["a", "b", "c"]]
    # cost: every call made; success: the answering model's
    assert out.cost.tolist() == pytest.approx([0.003, 0.026, 0.034, 0.043])
    assert out.success.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert out.input_tokens.tolist() == [20, 60, 90, 120]
    assert out.output_tokens.tolist() == [150, 475, 300, 200]
    assert out.n_calls.tolist() == [2, 3, 3, 3]
    # latency: per stage the slowest call (0.5 s + tokens / 50); summed over the stages reached
    # p0: max(1.5, 2.5) = 2.5; p1: max(1.0, 3.5) + 6.5 = 10.0; p2: max(0.5, 2.5) + 4.5 = 7.0; p3: max(1.5, 1.5) + 2.5 = 4.0
    assert out.latency.tolist() == pytest.approx([2.5, 10.0, 7.0, 4.0])
    # added: minus the answering call's own latency (b 2.5; c 6.5, 4.5, 2.5)
    assert out.added_latency.tolist() == pytest.approx([0.0, 3.5, 2.5, 1.5])
    assert out.cost.mean() == pytest.approx(0.0265)
    assert out.success.mean() == pytest.approx(0.75)


def test_replay_goes_through_the_same_decisions_as_serving():
    matrix = hand_matrix()
    data = cascade_data(matrix, None, "number")
    cascade = Cascade("chain", (Stage(("a",), FormatCheck()), Stage(("b",), Agreement(2)), Stage(("c",))), "number")
    out = run_cascade(cascade, data)
    for i, row in enumerate(ANSWERS):
        answers = dict(zip(MODELS, row))
        for k in range(3):
            verdict = cascade.decide(k, {m: answers[m] for m in cascade.called_through(k)})
            if verdict.accept:
                break
        assert (k, verdict.model) == (int(out.stop[i]), MODELS[out.answered[i]])


def test_infer_answer_kind():
    assert infer_answer_kind(np.array([["A", "(b)"], ["C", "D."]], dtype=object)) == "choice"
    assert infer_answer_kind(np.array([["12", "$3"], ["4.5", "7"]], dtype=object)) == "number"
    assert infer_answer_kind(np.array([["12", "\\frac{1}{2}"], ["2\\sqrt{3}", "7"]], dtype=object)) == "math"
    assert infer_answer_kind(np.array([["Paris", "Rome"], ["12", None]], dtype=object)) == "auto"
    assert infer_answer_kind(None) == "auto"


# ----------------------------------------------------------------------------- search on training prompts only


def synthetic_answers(n: int, seed: int):
    """Three models: a and b cheap and often wrong (independently), c dear and mostly right."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 1000, n)
    correct = np.column_stack([rng.random(n) < q for q in (0.7, 0.75, 0.95)])
    answers = np.where(correct, truth[:, None], truth[:, None] + rng.integers(1, 4, (n, 3)) * np.array([1, 7, 13]))
    texts = [f"question {i}" for i in range(n)]
    matrix = OutcomeMatrix(
        prompt_keys=np.array([f"s/{i}" for i in range(n)], dtype=object),
        datasets=np.array(["s"] * n, dtype=object),
        tasks=np.array(["t"] * n, dtype=object),
        texts=texts,
        models=["a", "b", "c"],
        success=correct.astype(float),
        input_tokens=np.full((n, 3), 100.0),
        output_tokens=np.full((n, 3), 50.0),
        cost=np.tile([0.0001, 0.0002, 0.005], (n, 1)),
        answers=answers.astype(str).astype(object),
    )
    return matrix


def make_ref(test: OutcomeMatrix):
    from training import baselines

    mc, mq = test.cost.mean(axis=0), test.success.mean(axis=0)
    oracle = list(baselines.oracle_sweep(test.success, test.cost, n=64))
    rows = np.arange(test.n_prompts)
    oc = [test.cost[rows, c].mean() for _, c in oracle]
    oq = [test.success[rows, c].mean() for _, c in oracle]
    return reference(list(test.models), mc, mq, oc, oq)


def test_fixed_family_finds_the_agreement_cascade():
    matrix = synthetic_answers(600, seed=3)
    train, test = matrix.subset(np.arange(400)), matrix.subset(np.arange(400, 600))
    rep = replay_cascades(train, test, None, None, make_ref(test), families=("fixed",), folds=3)
    described = [s["describe"] for s in rep.meta["families"]["cascade/fixed"]["settings"]]
    assert any(d.startswith("a+b [agree>=2] -> c") for d in described), described
    m = rep.metrics["cascade/fixed"]
    # the default setting answers like c at a fraction of c's cost
    assert m["success_rate"] >= test.success[:, 2].mean() - 0.03
    assert m["usd_per_request"] < 0.8 * 0.005
    assert m["aiq"] > make_ref(test).aiq_fixed


def test_search_never_sees_the_test_prompts():
    matrix = synthetic_answers(500, seed=5)
    train, test = matrix.subset(np.arange(350)), matrix.subset(np.arange(350, 500))
    ref = make_ref(test)
    with pytest.raises(CascadeSearchError, match="test prompt"):
        replay_cascades(train, matrix.subset(np.arange(300, 500)), None, None, ref, families=("fixed",))
    first = replay_cascades(train, test, None, None, ref, families=("fixed", "learned"), folds=3)
    # scramble every outcome and answer of the test prompts: the settings chosen on the training prompts stay the same
    rng = np.random.default_rng(0)
    scrambled = OutcomeMatrix(**{**test.__dict__, "success": rng.permutation(test.success), "answers": rng.permutation(test.answers)})
    second = replay_cascades(train, scrambled, None, None, ref, families=("fixed", "learned"), folds=3)
    for family in ("cascade/fixed", "cascade/learned"):
        assert first.meta["families"][family]["settings"] == second.meta["families"][family]["settings"]
        assert first.meta["families"][family]["default"] == second.meta["families"][family]["default"]


def test_learned_tests_are_fitted_out_of_fold():
    matrix = synthetic_answers(300, seed=7)
    data = cascade_data(matrix, None, "number")
    folds = [np.arange(0, 100), np.arange(100, 200), np.arange(200, 300)]
    search = CascadeSearch(data, folds, max_models=3)
    pre = search.prefix(((0, 1),))
    oof = search.learned_scores(pre)
    # changing the outcomes of fold 0 changes no out-of-fold score in fold 0
    changed = cascade_data(OutcomeMatrix(**{**matrix.__dict__, "success": np.where(np.arange(300)[:, None] < 100, 1 - matrix.success, matrix.success)}), None, "number")
    other = CascadeSearch(changed, folds, max_models=3)
    oof2 = other.learned_scores(other.prefix(((0, 1),)))
    assert np.allclose(oof[:100], oof2[:100])
    assert not np.allclose(oof[100:], oof2[100:])


def test_logs_without_answers_are_a_clear_error():
    matrix = synthetic_answers(100, seed=1)
    bare = OutcomeMatrix(**{**matrix.__dict__, "answers": None})
    with pytest.raises(CascadeSearchError, match="no parsed answers"):
        replay_cascades(bare.subset(np.arange(60)), bare.subset(np.arange(60, 100)), None, None, make_ref(bare), families=("fixed",))


# ----------------------------------------------------------------------------- thrifty replay --cascades on real logs


@pytest.fixture(scope="module")
def zeroeval_slice(tmp_path_factory, data_dir):
    """120 gsm8k and 80 math-l5 prompts of the shared ZeroEval logs, every model's rows."""
    parts = []
    for name, k in (("zeroeval-gsm8k", 120), ("zeroeval-math-l5", 80)):
        frame = pd.read_parquet(data_dir / "outcomes" / f"{name}.parquet")
        keep = sorted(frame.prompt_id.unique())[:k]
        parts.append(frame[frame.prompt_id.isin(keep)])
    path = tmp_path_factory.mktemp("slice") / "zeroeval-slice.parquet"
    pd.concat(parts, ignore_index=True).to_parquet(path, index=False)
    return path


def test_replay_cli_cascades_on_real_logs_and_independent_recomputation(zeroeval_slice, data_dir, tmp_path, thrifty_home):
    from training.cli import replay

    out = tmp_path / "out"
    import mlflow

    from models.settings import get_settings

    args = ["--logs", str(zeroeval_slice), "--prices", str(data_dir / "prices.csv"), "--out", str(out), "--predictors", "logistic",
            "--knobs", "16", "--folds", "2", "--experiment", "cascades", "--cascades", "--cascade-models", "4"]  # fmt: skip
    result = CliRunner().invoke(replay, args)
    assert result.exit_code == 0, result.output
    assert "best cascade: cascade/" in result.output
    mlflow.set_tracking_uri(get_settings().resolved_tracking_uri)
    runs = mlflow.search_runs(experiment_names=["cascades"])
    assert "metrics.replay/cascade/learned/aiq" in runs.columns
    assert "cascade_decisions.parquet" in {a.path for a in mlflow.MlflowClient().list_artifacts(runs.run_id[0])}
    metrics = json.loads((out / "metrics.json").read_text())
    curve = pd.read_csv(out / "curve.csv")
    decisions = pd.read_parquet(out / "cascade_decisions.parquet")
    assert list(decisions.columns) == ["router", "knob", "dataset", "prompt_id", "models_called", "answered_by"]
    families = ("cascade/fixed", "cascade/confidence", "cascade/learned")
    for name in families:
        for key in ("success_rate", "usd_per_request", "usd_per_success", "input_tokens", "output_tokens", "aiq", "gap_closed", "latency_s", "added_latency_s", "calls_per_request"):
            assert key in metrics[name], (name, key)
        assert (curve.router == name).sum() == metrics[name]["settings"]
    meta = json.loads((out / "replay.json").read_text())
    assert set(meta["cascades"]["families"]) == set(families)
    assert (out / "frontier.png").stat().st_size > 0

    # Recompute every cascade point from the parquet and the logs alone.
    logs = pd.read_parquet(zeroeval_slice, columns=["dataset", "prompt_id", "model", "success", "cost_usd", "output_tokens"])
    logs = logs.set_index(["dataset", "prompt_id", "model"])
    calls = decisions.explode("models_called").rename(columns={"models_called": "model"})
    calls = calls.join(logs, on=["dataset", "prompt_id", "model"])
    assert calls.cost_usd.notna().all()
    cost = calls.groupby(["router", "knob", "dataset", "prompt_id"]).cost_usd.sum()
    answer_rows = decisions.rename(columns={"answered_by": "model"}).join(logs, on=["dataset", "prompt_id", "model"])
    assert answer_rows.success.notna().all()
    per_prompt = answer_rows.set_index(["router", "knob", "dataset", "prompt_id"]).success.to_frame().join(cost)
    points = per_prompt.groupby(["router", "knob"]).agg(cost=("cost_usd", "mean"), quality=("success", "mean")).reset_index()
    mine = curve[curve.router.str.startswith("cascade/")].merge(points, on=["router", "knob"], suffixes=("", "_recomputed"))
    assert len(mine) == len(curve[curve.router.str.startswith("cascade/")]) > 3
    assert np.allclose(mine.cost, mine.cost_recomputed, rtol=1e-9, atol=0)
    assert np.allclose(mine.quality, mine.quality_recomputed, rtol=1e-9, atol=0)
    # the answering model is always among the models called, and calls at a knob follow the cascade's order
    assert all(a in list(c) for a, c in zip(decisions.answered_by, decisions.models_called))
    # the default point of each family in metrics.json is one of its recomputed points
    for name in families:
        row = points[(points.router == name) & np.isclose(points.knob, metrics[name]["knob"])]
        assert len(row) == 1
        assert row.quality.iloc[0] == pytest.approx(metrics[name]["success_rate"])
        assert row.cost.iloc[0] == pytest.approx(metrics[name]["usd_per_request"])


def test_search_scores_equal_the_replay_of_the_cascades_it_builds():
    """The vectorised search and run_cascade (the serving semantics, gates included) agree on every setting."""
    matrix = synthetic_answers(400, seed=11)
    rng = np.random.default_rng(2)
    p = np.clip(0.6 * matrix.success + 0.4 * rng.random(matrix.success.shape), 0, 1)  # an informative router
    data = cascade_data(matrix, p, "number")
    search = CascadeSearch(data, [np.arange(0, 200), np.arange(200, 400)], max_models=3)
    gated = 0
    for family in ("fixed", "confidence"):
        found = search.search(family)
        assert len(found.settings) >= 2
        for setting in found.settings:
            out = run_cascade(setting.cascade, data)
            assert out.cost.mean() == pytest.approx(setting.cost, rel=1e-12)
            assert out.success.mean() == pytest.approx(setting.quality, rel=1e-12)
            assert np.array_equal(out.success, setting.success)
            gated += setting.cascade.stages[0].enter > 0
    assert gated > 0  # some front setting skips the cheap stage where the router expects it to fail


def test_a_gate_sends_unpromising_prompts_straight_to_the_last_stage():
    matrix = hand_matrix()
    p = np.array([[0.9, 0.9, 0.9], [0.1, 0.2, 0.9], [0.9, 0.9, 0.9], [0.3, 0.5, 0.9]])
    data = cascade_data(matrix, p, "number", LatencyProxy(overhead_s=0.5, tokens_per_s=50.0))
    gated = Cascade("gated", (Stage(("a", "b"), Agreement(2), enter=0.4), Stage(("c",))), "number")
    out = run_cascade(gated, data)
    # p1: neither a (0.1) nor b (0.2) reaches 0.4: only c is called; p3: b (0.5) does: the pair runs
    assert [[MODELS[j] for j in called] for called in out.called] == [["a", "b"], ["c"], ["a", "b", "c"], ["a", "b", "c"]]
    assert out.cost.tolist() == pytest.approx([0.003, 0.020, 0.034, 0.043])
    assert out.latency.tolist() == pytest.approx([2.5, 6.5, 7.0, 4.0])
    assert out.added_latency[1] == pytest.approx(0.0)
    assert gated.plan({"a": 0.1, "b": 0.2, "c": 0.9}) == [1]
    assert gated.plan({"a": 0.1, "b": 0.5}) == [0, 1]
    assert gated.plan(None) == [1]  # no prediction: a gated stage is skipped
    assert gated.worst_case_cost({"a": 1.0, "b": 2.0, "c": 10.0}, {"a": 0.1, "b": 0.2}) == 10.0
    assert gated.worst_case_cost({"a": 1.0, "b": 2.0, "c": 10.0}) == 13.0
    # serving reaches the last stage with only its own answer
    verdict = gated.decide(1, {"c": "3"}, {"a": 0.1, "b": 0.2, "c": 0.9})
    assert verdict.accept and verdict.model == "c" and verdict.answer == "3"


def test_replay_cli_cascades_without_answers_is_one_clear_line(tmp_path, thrifty_home):
    from tests.synthetic import prices_csv, synthetic_logs
    from training.cli import replay

    logs = tmp_path / "logs.parquet"
    synthetic_logs(60, seed=2).to_parquet(logs)
    args = ["--logs", str(logs), "--prices", prices_csv(tmp_path / "p.csv"), "--out", str(tmp_path / "o"), "--no-mlflow", "--cascades"]
    result = CliRunner().invoke(replay, args)
    assert result.exit_code == 1
    assert "Error: --cascades: the logs carry no parsed answers (column 'answer')" in result.output
    assert "Traceback" not in result.output and "fitting" not in result.output
