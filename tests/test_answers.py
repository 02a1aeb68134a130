"""Answer extraction and normalisation: what counts as the same answer (router.answers)."""

from __future__ import annotations

import math

import pytest

from router.answers import (
    UnknownAnswerKindError,
    extract_answer,
    get_normalizer,
    is_refusal,
    json_answer,
    normalize_answer,
    passes_format,
)

NUMBERS = [
    ("42", "42"),
    ("  42 ", "42"),
    ("42.0", "42"),
    ("42.00", "42"),
    ("-7", "-7"),
    ("−7", "-7"),  # unicode minus
    ("+3", "3"),
    ("1,234", "1234"),
    ("1,234,567.50", "2469135/2"),
    ("$1,234", "1234"),
    ("$6.00", "6"),
    ("\\$18", "18"),
    ("€5", "5"),
    ("20 dollars", "20"),
    ("25%", "25"),
    ("12.5\\%", "25/2"),
    ("5 hours", "5"),
    ("42 grams", "42"),
    ("55 m/s", "55"),
    ("0.5", "1/2"),
    ("1/2", "1/2"),
    (".5", "1/2"),
    ("3/2", "3/2"),
    ("1 1/2", "3/2"),
    ("-1 1/2", "-3/2"),
    ("\\frac{1}{2}", "1/2"),
    ("\\dfrac{3}{4}", "3/4"),
    ("\\tfrac12", "1/2"),
    ("-\\frac{11}{5}", "-11/5"),
    ("\\frac{48}{5}", "48/5"),
    ("\\boxed{42}", "42"),
    ("$\\boxed{\\frac{7}{2}}$", "7/2"),
    ("\\\\frac{49}{2}", "49/2"),  # backslashes doubled by JSON escaping
    ("$42$", "42"),
    ("\\(42\\)", "42"),
    ('"$264,000"', "264000"),
    ("`$26`", "26"),
    ("**17**", "17"),
    ("x = 5", "5"),
    ("144 / 12 = 12 inches", "12"),
    ("The answer is 42", "42"),
    ("Answer: 7", "7"),
    ('{"reasoning": "...", "answer": "18"}', "18"),
    ('{"answer": 18}', "18"),
    ("1e3", "1000"),
    ("2.50", "5/2"),
    ("\\text{42}", "42"),
    ("10{,}000", "10000"),
    # not numbers
    ("4\\sqrt{85}", None),
    ("There are no such positive integers $n$.", None),
    ("86, 42", None),
    ("", None),
    ("   ", None),
    (None, None),
    (math.nan, None),
    ("2:00 pm", None),
    ("1/0", None),
]


@pytest.mark.parametrize("text,expected", NUMBERS)
def test_numbers(text, expected):
    assert normalize_answer(text, "number") == expected


def test_equal_numbers_written_differently_agree():
    forms = ["0.5", "1/2", "\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", ".50", '{"answer": "0.50"}']
    assert {normalize_answer(f, "number") for f in forms} == {"1/2"}


MATH = [
    ("4 \\sqrt{85}", "4\\sqrt{85}"),
    ("4\\sqrt{85}", "4\\sqrt{85}"),
    ("4 \\\\sqrt{85}", "4\\sqrt{85}"),
    ("\\left(\\frac{1+\\sqrt{5}}{2}\\right)^{9}", "(\\frac{1+\\sqrt{5}}{2})^9"),
    ("\\dfrac{a-1}{b}", "\\frac{a-1}{b}"),
    ("$2\\sqrt{13}$", "2\\sqrt{13}"),
    ("\\sqrt2", "\\sqrt{2}"),
    ("3\\,\\pi", "3\\pi"),
    ("\\frac{48}{5}", "48/5"),  # a number stays a number
    ("9.60", "48/5"),
    ("\\boxed{10^{2}}", "10^2"),
    ("", None),
]


@pytest.mark.parametrize("text,expected", MATH)
def test_math(text, expected):
    assert normalize_answer(text, "math") == expected


CHOICES = [
    ("B", "B"),
    ("b", "B"),
    ("(B)", "B"),
    ("(b)", "B"),
    ("B.", "B"),
    ("B)", "B"),
    ("B:", "B"),
    (" ( C ) ", "C"),
    ("B. Paris", "B"),
    ("(B) Paris", "B"),
    ("The answer is B", "B"),
    ("The answer is (B).", "B"),
    ("the answer is (d)", "D"),
    ("Answer: C", "C"),
    ("answer: option (J)", "J"),
    ("Option C", "C"),
    ("\\boxed{D}", "D"),
    ('{"answer": "E"}', "E"),
    ("**A**", "A"),
    ("$A$", "A"),
    # not choices
    ("K", None),  # outside A-J
    ("Paris", None),
    ("", None),
    (None, None),
    ("42", None),
    ("The answer is a bird", None),  # a lower-case word is not an option letter
]


@pytest.mark.parametrize("text,expected", CHOICES)
def test_choices(text, expected):
    assert normalize_answer(text, "choice") == expected


def test_choice_letters_can_be_narrowed():
    from router.answers import normalize_choice

    assert normalize_choice("E", letters="ABCD") is None
    assert normalize_choice("(d)", letters="ABCD") == "D"


TEXTS = [
    ("Paris", "paris"),
    ("  Paris.  ", "paris"),
    ("PARIS!", "paris"),
    ('"Paris"', "paris"),
    ("New   York\nCity", "new york city"),
    ("\\text{Mumbai}", "mumbai"),
    ('{"answer": "Mumbai"}', "mumbai"),
    ("", None),
    ("  ", None),
]


@pytest.mark.parametrize("text,expected", TEXTS)
def test_text(text, expected):
    assert normalize_answer(text, "text") == expected


AUTO = [
    ("B", "B"),
    ("(c)", "C"),
    ("$1,200", "1200"),
    ("3.0", "3"),
    ("\\frac{2}{4}", "1/2"),
    ("2\\sqrt{3}", "2\\sqrt{3}"),
    ("Mumbai", "mumbai"),
    ("The Nile.", "the nile"),
]


@pytest.mark.parametrize("text,expected", AUTO)
def test_auto(text, expected):
    assert normalize_answer(text, "auto") == expected


REFUSALS = [
    ("I cannot help with that.", True),
    ("I'm sorry, but I can't answer.", True),
    ("As an AI, I do not have opinions.", True),
    ("The value cannot be determined without more information.", True),
    ("There is not enough information to answer.", True),
    ("I am unable to solve this.", True),
    ("I don't know", True),
    ("42", False),
    ("The cannon fired 3 times", False),
    ("", False),
    (None, False),
]


@pytest.mark.parametrize("text,expected", REFUSALS)
def test_refusals(text, expected):
    assert is_refusal(text) is expected


FORMAT = [
    ("42", "number", True),
    ("$42", "number", True),
    ("forty-two", "number", False),
    ("", "number", False),
    (None, "number", False),
    ("I cannot determine 42", "number", False),  # a refusal, though it holds a number
    ("B", "choice", True),
    ("Paris", "choice", False),
    ("Paris", "text", True),
    ("The answer cannot be determined.", "text", False),
    ("4\\sqrt{2}", "math", True),
    ("4\\sqrt{2}", "number", False),
]


@pytest.mark.parametrize("text,kind,expected", FORMAT)
def test_format_check(text, kind, expected):
    assert passes_format(text, kind) is expected


RESPONSES = [
    ('```json\n{\n  "reasoning": "2+2",\n  "answer": "4"\n}\n```', "4"),
    ('{"reasoning": "It is \\"odd\\"", "answer": 7}', "7"),
    ('broken json {"reasoning": "x", "answer": "12"', "12"),
    ("We get $x=3$, so the result is \\boxed{\\frac{1}{3}}.", "\\frac{1}{3}"),
    ("Step 1 ... Step 2 ...\nThe answer is (C).", "(C)"),
    ("Work.\nFinal answer: 1,024", "1,024"),
    ("16 - 3 = 13 eggs.\n9 * 2 = <<9*2=18>>18.\n#### 18", "18"),
    ("Paris", "Paris"),
    ("", None),
    ("A long explanation\nover two lines without any stated answer", None),
]


@pytest.mark.parametrize("response,expected", RESPONSES)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_json_answer_takes_the_first_object_with_the_field():
    assert json_answer('{"a": 1} then {"answer": "x"} and {"answer": "y"}') == "x"
    assert json_answer("no json here") is None
    assert json_answer('{"answer": null}') is None


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(UnknownAnswerKindError, match="unknown answer kind 'roman'.*number"):
        get_normalizer("roman")
