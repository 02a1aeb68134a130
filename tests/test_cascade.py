"""Cascade policies as data plus pure decisions (router.cascade)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from router.cascade import (
    ACCEPTANCE_TESTS,
    Agreement,
    Always,
    Cascade,
    CascadeError,
    Confidence,
    FormatCheck,
    Learned,
    Stage,
    UnknownAcceptanceTestError,
    acceptance_features,
    answer_codes,
    answer_view,
    get_acceptance_test,
    n_acceptance_features,
)


def agree_cascade(kind: str = "number") -> Cascade:
    return Cascade("cheap-pair", (Stage(("a", "b"), Agreement(2)), Stage(("c",))), kind)


# ----------------------------------------------------------------------------- views


def test_answer_codes_are_per_row():
    codes = answer_codes([["1", "1", None], ["x", "y", "x"]])
    assert codes.tolist() == [[0, 0, -1], [0, 1, 0]]


def test_candidate_is_the_stage_majority_and_ties_go_to_the_later_model():
    # called: a, b (stage 1), c, d (stage 2, the current one)
    codes = np.array(
        [
            [0, 0, 1, 1],  # stage votes c=1, d=1 -> tie -> d; support counts a, b too: 2
            [0, 1, 0, 1],  # c (0) and d (1) tie -> d; d agrees with b: support 2
            [0, 0, 0, 1],  # tie -> d, support 1 (nobody else says 1)
            [0, 0, 0, 0],  # all agree: d, support 4
        ]
    )
    valid = np.ones_like(codes, dtype=bool)
    view = answer_view(1, ["a", "b", "c", "d"], (2, 3), codes, valid)
    assert view.candidate.tolist() == [3, 3, 3, 3]
    assert view.support.tolist() == [2, 2, 1, 4]


def test_invalid_answers_neither_vote_nor_agree():
    codes = np.array([[0, 0], [0, 0], [0, 1]])
    valid = np.array([[True, False], [False, False], [True, False]])
    view = answer_view(0, ["a", "b"], (0, 1), codes, valid)
    # row 0: b is invalid, so a (the only valid answer) is the candidate, supported by itself only
    assert view.candidate.tolist() == [0, 1, 0]
    assert view.support.tolist() == [1, 0, 1]
    assert view.candidate_valid.tolist() == [True, False, True]


# ----------------------------------------------------------------------------- decisions


def test_agreement_accepts_at_stage_one():
    v = agree_cascade().decide(0, {"a": "$1,200", "b": "1200.00"})
    assert v.accept and not v.final
    assert v.model == "b" and v.answer == "1200" and v.support == 2


def test_disagreement_escalates_and_the_last_stage_always_answers():
    cascade = agree_cascade()
    first = cascade.decide(0, {"a": "12", "b": "13"})
    assert not first.accept
    last = cascade.decide(1, {"a": "12", "b": "13", "c": "I cannot answer that."})
    assert last.accept and last.final and last.model == "c"
    assert last.answer is None or last.support == 0  # a refusal is no answer, yet it is returned


def test_agreement_across_stages():
    cascade = Cascade("chain", (Stage(("a",), FormatCheck()), Stage(("b",), Agreement(2)), Stage(("c",))), "number")
    assert not cascade.decide(0, {"a": ""}).accept  # empty answer fails the format check
    assert cascade.decide(0, {"a": "7"}).accept
    second = cascade.decide(1, {"a": "7", "b": "7.0"})
    assert second.accept and second.model == "b" and second.support == 2
    assert not cascade.decide(1, {"a": "7", "b": "8"}).accept


def test_confidence_uses_the_router_prediction_of_the_answering_model():
    cascade = Cascade("conf", (Stage(("a",), Confidence(0.8)), Stage(("c",))), "choice")
    assert cascade.decide(0, {"a": "(B)"}, {"a": 0.85, "c": 0.9}).accept
    assert not cascade.decide(0, {"a": "(B)"}, {"a": 0.75}).accept
    assert not cascade.decide(0, {"a": "Paris"}, {"a": 0.99}).accept  # not a choice: fails the format check
    assert not cascade.decide(0, {"a": "B"}).accept  # no router prediction: never confident


def test_confidence_conditioned_on_agreement():
    cascade = Cascade("conf2", (Stage(("a", "b"), Confidence(0.5, min_support=2)), Stage(("c",))), "number")
    assert cascade.decide(0, {"a": "3", "b": "3"}, {"a": 0.6, "b": 0.6}).accept
    assert not cascade.decide(0, {"a": "3", "b": "4"}, {"a": 0.9, "b": 0.9}).accept


def test_learned_test_scores_its_features():
    called = 2
    coef = np.zeros(n_acceptance_features(called))
    coef[-4] = 6.0  # support share: 1.0 when both agree, 0.5 when not
    cascade = Cascade("learned", (Stage(("a", "b"), Learned(0.85, tuple(coef), -4.0)), Stage(("c",))), "number")
    agree = cascade.decide(0, {"a": "5", "b": "5"}, {"a": 0.5, "b": 0.5})
    assert agree.accept and agree.score == pytest.approx(1 / (1 + math.exp(-(6.0 - 4.0))))
    disagree = cascade.decide(0, {"a": "5", "b": "6"}, {"a": 0.5, "b": 0.5})
    assert not disagree.accept and disagree.score == pytest.approx(1 / (1 + math.exp(-(3.0 - 4.0))))


def test_learned_features_layout():
    view = answer_view(0, ["a", "b"], (0, 1), np.array([[0, 1]]), np.array([[True, True]]), np.array([[0.5, 0.9]]), np.array([[99.0, np.nan]]))
    x = acceptance_features(view)
    assert x.shape == (1, n_acceptance_features(2)) == (1, 12)
    assert x[0, 0] == pytest.approx(0.0)  # logit 0.5
    assert x[0, 1] == pytest.approx(math.log(9))
    assert x[0, 2:4].tolist() == [0.0, 1.0]  # only b agrees with the candidate (b: the tie goes to the later model)
    assert x[0, 4:6].tolist() == [1.0, 1.0]  # both pass the format check
    assert x[0, 6:8].tolist() == pytest.approx([math.log(100), 0.0])  # log(1 + output tokens); unknown -> 0
    assert x[0, 8:].tolist() == pytest.approx([0.5, 1.0, 1.0, math.log(9)])  # support share, distinct share, valid, logit p


def test_decide_needs_every_called_model_and_a_real_stage():
    cascade = agree_cascade()
    with pytest.raises(CascadeError, match=r"no answer given for \['b'\]"):
        cascade.decide(0, {"a": "1"})
    with pytest.raises(CascadeError, match="no stage 3"):
        cascade.decide(2, {"a": "1", "b": "1", "c": "1"})


# ----------------------------------------------------------------------------- storage and errors


def test_round_trip_through_json():
    coef = tuple(float(x) for x in np.arange(n_acceptance_features(2)))
    cascade = Cascade(
        "three",
        (Stage(("a", "b"), Learned(0.93, coef, -1.5)), Stage(("c",), Confidence(0.7)), Stage(("d",))),
        "math",
    )
    data = json.loads(json.dumps(cascade.to_dict()))
    assert Cascade.from_dict(data) == cascade
    assert data["stages"][0]["accept"] == {"test": "learned", "threshold": 0.93, "coef": list(coef), "intercept": -1.5}
    assert cascade.models == ["a", "b", "c", "d"]
    assert "a+b [P(correct)>=0.93] -> c [p>=0.7] -> d" == cascade.describe()


def test_registry_lookup_error_names_the_choices():
    assert set(ACCEPTANCE_TESTS) == {"always", "agree", "format", "confidence", "learned"}
    assert get_acceptance_test("agree") is Agreement
    with pytest.raises(UnknownAcceptanceTestError) as info:
        get_acceptance_test("vibes")
    assert "unknown acceptance test 'vibes'" in str(info.value) and "'agree'" in str(info.value)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"name": "x", "stages": []}, "'stages' must be a non-empty list"),
        ({"name": "x", "stages": [{"models": ["a"], "accept": {"test": "vibes"}}, {"models": ["b"]}]}, "stage 1: unknown acceptance test 'vibes'"),
        ({"name": "x", "stages": [{"models": ["a"], "accept": {"test": "agree", "colour": 1}}]}, "stage 1: invalid parameters"),
        ({"name": "x", "stages": [{"models": "a"}]}, "stage 1: expected"),
        ({"name": "x", "stages": [{"models": ["a"]}, {"models": ["a"]}]}, "stage 2 calls a model called before"),
        ({"name": "x", "answer_kind": "roman", "stages": [{"models": ["a"]}]}, "unknown answer kind 'roman'"),
        ({"name": "x", "stages": [{"models": ["a", "b"], "accept": {"test": "learned", "coef": [1.0, 2.0]}}, {"models": ["c"]}]}, "stage 1's learned test has 2 coefficients; 12 expected"),
        ({"name": "x", "stages": [{"models": []}]}, "stage 1: expected|calls no model"),
    ],
)
def test_invalid_cascades_are_clear_errors(data, message):
    with pytest.raises(CascadeError, match=message):
        Cascade.from_dict(data)


def test_last_stage_test_is_ignored_and_always_is_the_default():
    cascade = Cascade("one", (Stage(("a",), Agreement(5)),), "text")
    v = cascade.decide(0, {"a": "whatever"})
    assert v.accept and v.final and v.model == "a"
    assert Stage(("a",)).accept == Always()


def test_worst_case_cost_books_every_stage():
    cascade = agree_cascade()
    assert cascade.worst_case_cost({"a": 0.001, "b": 0.002, "c": 0.01}) == pytest.approx(0.013)
    with pytest.raises(CascadeError, match=r"no expected cost for \['c'\]"):
        cascade.worst_case_cost({"a": 0.001, "b": 0.002})


def test_a_profile_can_hold_a_cascade(tmp_path):
    from router.profiles import Profile, ProfileError, load_profile, load_profiles, save_profile

    cascade = agree_cascade()
    path = save_profile(Profile(name="pair", cascade=cascade.to_dict(), router_uri="models:/thrifty@champion"), tmp_path)
    loaded = load_profile(path)
    assert loaded.make_cascade() == cascade
    assert load_profiles(tmp_path)["pair"].make_cascade().describe() == "a+b [agree>=2] -> c"
    assert Profile(name="single").make_cascade() is None
    with pytest.raises(ProfileError, match="profile 'bad': cascade 'x', stage 1: unknown acceptance test 'vibes'"):
        save_profile(Profile(name="bad", cascade={"name": "x", "stages": [{"models": ["a"], "accept": {"test": "vibes"}}]}), tmp_path)
    assert not (tmp_path / "bad.json").exists()
    broken = json.loads(path.read_text())
    broken["cascade"]["stages"] = []
    (tmp_path / "broken.json").write_text(json.dumps({**broken, "name": "broken"}))
    with pytest.raises(ProfileError, match="broken.json: profile 'broken': .*non-empty list"):
        load_profile(tmp_path / "broken.json")
