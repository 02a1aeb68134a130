"""Final answers of model outputs: extraction, normalisation and format checks.

A cascade accepts a cheap model's answer when, among other tests, two models
*agree*; agreement is only as good as the normalisation that decides when two
answers are the same. Every rule is explicit here and tested
(``tests/test_answers.py``), and every function is pure: text in, text out.

Kinds of answers (``normalize_answer(text, kind)``):

* ``number`` — a number, written in any of the usual ways: ``1,234``,
  ``$1,234.00``, ``25%`` (the number 25: scorers compare the number), ``5
  hours``, ``x = 5``, ``3/4``, ``1 1/2``, ``\\frac{3}{4}``, ``-\\dfrac12``,
  ``\\boxed{42}``, ``4.50``, ``1e3``. Canonical form: the exact rational
  (``Fraction``) as ``"p"`` or ``"p/q"``, so ``0.5``, ``1/2`` and
  ``\\frac{1}{2}`` are all ``"1/2"`` and ``42.0`` is ``"42"``. Anything else
  (``4\\sqrt{85}``, a sentence) is not a number: ``None``.
* ``math`` — a number when it is one, else the LaTeX expression with layout
  removed (``\\left``/``\\right``, spacing commands, ``$``, blanks,
  ``\\dfrac`` → ``\\frac``, ``^{2}`` → ``^2``, ``\\sqrt2`` → ``\\sqrt{2}``).
* ``choice`` — a multiple-choice letter (A–J by default): ``B``, ``(b)``,
  ``B.``, ``B) Paris``, ``The answer is (B)``, ``Answer: B``.
* ``text`` — lower case, blanks collapsed, outer quotes and end punctuation removed.
* ``auto`` — a bare letter as a choice, else a number, else a math expression
  if it holds LaTeX, else text.

Every kind first unwraps what wraps an answer: a JSON object's ``"answer"``
field, ``\\boxed{...}`` (the last one), ``\\text{...}``, math delimiters,
quotes, backticks and Markdown bold, and undoes doubled backslashes (answers
stored from JSON strings often carry ``\\\\frac``).
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from typing import Callable

KINDS = ("number", "math", "choice", "text", "auto")
CHOICE_LETTERS = "ABCDEFGHIJ"


class UnknownAnswerKindError(KeyError):
    """An answer kind that has no normaliser."""

    def __init__(self, kind: str):
        self.kind = kind
        super().__init__(kind)

    def __str__(self) -> str:
        return f"unknown answer kind {self.kind!r}; expected one of {list(KINDS)}"


# ----------------------------------------------------------------------------- unwrapping

_ANSWER_FIELD = re.compile(r'"answer"\s*:\s*("(?:[^"\\]|\\.)*"|-?[\d.,]+|true|false|null)', re.IGNORECASE)


def json_answer(text: str) -> str | None:
    """The ``"answer"`` field of the first JSON object in ``text`` that has one (a regex fallback for broken JSON)."""
    if text is None or '"answer"' not in text.lower():
        return None
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(obj, dict):
            for key, value in obj.items():
                if str(key).lower() == "answer" and value is not None:
                    return value if isinstance(value, str) else json.dumps(value)
    match = _ANSWER_FIELD.search(text)
    if not match or match.group(1) == "null":
        return None
    raw = match.group(1)
    if raw.startswith('"'):
        try:
            return json.loads(raw)
        except ValueError:
            return raw[1:-1]
    return raw


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the ``{...}`` group opening at ``text[start]`` and the index after it."""
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None


def boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``."""
    found = None
    for match in re.finditer(r"\\(?:boxed|fbox)\s*", text):
        group = _braced(text, match.end())
        if group is not None:
            found = group[0]
    return found


def _replace_command(text: str, command: str, keep: Callable[[str], str]) -> str:
    """Replace every ``\\command{arg}`` by ``keep(arg)`` (nested braces allowed)."""
    out, i = [], 0
    pattern = re.compile(r"\\" + command + r"\s*(?=\{)")
    while True:
        match = pattern.search(text, i)
        if not match:
            out.append(text[i:])
            return "".join(out)
        group = _braced(text, match.end())
        if group is None:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : match.start()])
        out.append(keep(group[0]))
        i = group[1]


def _missing(value) -> bool:
    """None, NaN or pandas' NA: a log cell with no answer."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    return type(value).__name__ == "NAType"


_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"), ("`", "`"), ('"', '"'), ("'", "'"))


def unwrap(text: str | None) -> str | None:
    """The answer inside its wrappers (JSON field, ``\\boxed``, delimiters, quotes), or None when empty."""
    if _missing(text):
        return None
    text = str(text).strip()
    if not text:
        return None
    text = text.replace("\\\\", "\\")  # doubled by JSON escaping
    field = json_answer(text) if text.startswith("{") else None
    if field is not None:
        text = field.strip()
    inner = boxed(text)
    if inner is not None:
        text = inner.strip()
    changed = True
    while changed and text:
        changed = False
        for left, right in _DELIMITERS:
            if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text, changed = text[len(left) : len(text) - len(right)].strip(), True
    for command in ("text", "textbf", "mathrm", "mathbf", "textrm"):
        text = _replace_command(text, command, lambda arg: arg)
    text = text.strip()
    return text or None


# ----------------------------------------------------------------------------- refusals

_REFUSAL = re.compile(
    r"\b(i\s+(?:cannot|can\s*not|can't|won't|am\s+unable|'m\s+unable|am\s+not\s+able|'m\s+not\s+able)\b"
    r"|i(?:'m|\s+am)\s+sorry\b|i\s+apologi[sz]e\b|as\s+an\s+ai\b"
    r"|(?:cannot|can't|can\s+not)\s+be\s+(?:determined|answered|solved|calculated|computed)\b"
    r"|(?:not\s+enough|insufficient)\s+information\b"
    r"|unable\s+to\s+(?:determine|answer|solve|compute|calculate|provide)\b"
    r"|i\s+(?:do\s+not|don't)\s+know\b)",
    re.IGNORECASE,
)


def is_refusal(text: str | None) -> bool:
    """Whether the answer declines to answer ("I cannot…", "cannot be determined", "not enough information")."""
    return not _missing(text) and bool(_REFUSAL.search(str(text)))


# ----------------------------------------------------------------------------- numbers

_CURRENCY = re.compile(r"(?:\\\$|\$|€|£|¥|\bUSD\b|\bEUR\b|\bGBP\b|\bdollars?\b|\beuros?\b|\bcents?\b)", re.IGNORECASE)
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_PLAIN = re.compile(rf"^({_NUMBER})$")
_RATIO = re.compile(r"^([-+]?\d+)\s*/\s*(\d+)$")
_MIXED = re.compile(r"^([-+]?\d+)\s+(\d+)\s*/\s*(\d+)$")
_FRAC = re.compile(r"^([-+]?)\\[dt]?frac\s*(?:\{\s*([-+]?\d+(?:\.\d+)?)\s*\}|(\d))\s*(?:\{\s*(\d+(?:\.\d+)?)\s*\}|(\d))$")
# a unit or a word after a number: "5 hours", "42 grams", "55 m/s", "12 sq ft", "25%"
_UNIT_TAIL = re.compile(r"^(.*?\d)\s*(?:%|\\%|percent\b|[a-zA-Z][a-zA-Z ./²³^\d]*)$")


def _fraction(text: str) -> Fraction | None:
    text = text.strip().replace("−", "-").replace("–", "-")
    if _PLAIN.match(text):
        return Fraction(text)
    match = _RATIO.match(text)
    if match:
        den = int(match.group(2))
        return Fraction(int(match.group(1)), den) if den else None
    match = _MIXED.match(text)
    if match:
        whole, num, den = int(match.group(1)), int(match.group(2)), int(match.group(3))
        if not den:
            return None
        part = Fraction(num, den)
        return whole - part if match.group(1).startswith("-") else whole + part
    match = _FRAC.match(text.replace(" ", ""))
    if match:
        sign, num_a, num_b, den_a, den_b = match.groups()
        num, den = Fraction(num_a or num_b), Fraction(den_a or den_b)
        if not den:
            return None
        value = num / den
        return -value if sign == "-" else value
    return None


def parse_number(text: str | None) -> Fraction | None:
    """The number an answer states, exactly (see the module docstring), or None."""
    text = unwrap(text)
    if text is None:
        return None
    text = re.sub(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", "", text, flags=re.IGNORECASE).strip()
    if "=" in text:
        text = text.rsplit("=", 1)[1].strip()  # "x = 5", "12 * 3 = 36"
    text = _CURRENCY.sub("", text)
    text = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", text)  # thousands separators (a comma and a blank separate a list)
    text = text.replace("{,}", "").replace("\\!", "").replace("\\,", "").strip().rstrip(".").strip()
    text = text.replace("\\%", "%")
    for candidate in (text, _without_unit(text)):
        if candidate:
            value = _fraction(candidate)
            if value is not None:
                return value
    return None


def _without_unit(text: str) -> str | None:
    match = _UNIT_TAIL.match(text)
    if not match:
        return None
    head = match.group(1).strip()
    return head if _fraction(head) is not None else None


def format_number(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def normalize_number(text: str | None) -> str | None:
    value = parse_number(text)
    return None if value is None else format_number(value)


# ----------------------------------------------------------------------------- choices

_CHOICE_PATTERNS = (
    re.compile(r"^\(?\s*([A-Za-z])\s*\)?\s*[.):]?$"),  # B, (b), B., B)
    re.compile(r"^\(\s*([A-Za-z])\s*\)\s*\S"),  # (B) Paris
    re.compile(r"^([A-Z])\s*[.):]\s+\S"),  # B. Paris, B) Paris
    re.compile(r"\b(?i:answer)\s*(?:(?i:is)|:)?\s*:?\s*(?:(?i:option)\s*)?(?:\(\s*([A-Za-z])\s*\)|([A-Z])\b)"),
    re.compile(r"\b(?i:option)\s*(?:\(\s*([A-Za-z])\s*\)|([A-Z])\b)"),
)


def normalize_choice(text: str | None, letters: str = CHOICE_LETTERS) -> str | None:
    """The upper-case letter of a multiple-choice answer among ``letters``, or None."""
    text = unwrap(text)
    if text is None:
        return None
    for pattern in _CHOICE_PATTERNS:
        match = pattern.search(text)
        if match:
            letter = next(g for g in match.groups() if g).upper()
            if letter in letters:
                return letter
            if pattern is _CHOICE_PATTERNS[0]:
                return None  # a lone letter outside the options is not a choice
    return None


# ----------------------------------------------------------------------------- math and text


def normalize_math(text: str | None) -> str | None:
    """A number when the answer is one, else the LaTeX expression without layout."""
    number = normalize_number(text)
    if number is not None:
        return number
    expr = unwrap(text)
    if expr is None:
        return None
    expr = re.sub(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", "", expr, flags=re.IGNORECASE)
    expr = re.sub(r"\\[dt]frac", r"\\frac", expr)
    expr = re.sub(r"\\(?:left|right|displaystyle)\b", "", expr)
    expr = re.sub(r"\\[,;:! ]", "", expr)
    expr = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", expr)
    expr = expr.replace("$", "").replace("−", "-")
    expr = re.sub(r"\s+", "", expr)
    expr = re.sub(r"\^\{(.)\}", r"^\1", expr)
    expr = re.sub(r"_\{(.)\}", r"_\1", expr)
    expr = expr.rstrip(".")
    return expr or None


def normalize_text(text: str | None) -> str | None:
    """Lower case, blanks collapsed, outer quotes and end punctuation removed."""
    text = unwrap(text)
    if text is None:
        return None
    text = re.sub(r"\s+", " ", text.lower()).strip().rstrip(".!?;:,").strip()
    return text.strip("\"'`").strip() or None


def normalize_auto(text: str | None) -> str | None:
    """A bare letter as a choice, else a number, else a math expression (LaTeX), else text."""
    inner = unwrap(text)
    if inner is None:
        return None
    if _CHOICE_PATTERNS[0].match(inner) and inner.strip("().: ").upper() in CHOICE_LETTERS:
        return normalize_choice(inner)
    number = normalize_number(inner)
    if number is not None:
        return number
    if "\\" in inner or "^" in inner:
        return normalize_math(inner)
    return normalize_text(inner)


NORMALIZERS: dict[str, Callable[[str | None], str | None]] = {
    "number": normalize_number,
    "math": normalize_math,
    "choice": normalize_choice,
    "text": normalize_text,
    "auto": normalize_auto,
}


def get_normalizer(kind: str) -> Callable[[str | None], str | None]:
    try:
        return NORMALIZERS[kind]
    except KeyError:
        raise UnknownAnswerKindError(kind) from None


def normalize_answer(text: str | None, kind: str = "auto") -> str | None:
    """The canonical form of an answer of ``kind`` (two answers agree when these are equal), or None."""
    return get_normalizer(kind)(text)


def passes_format(text: str | None, kind: str = "auto") -> bool:
    """Not empty, not a refusal, and normalisable as ``kind`` (a number parses, a choice is a letter)."""
    if _missing(text) or not str(text).strip() or is_refusal(text):
        return False
    return normalize_answer(text, kind) is not None


# ----------------------------------------------------------------------------- whole responses

_HASHES = re.compile(r"^\s*####\s*(.+?)\s*$", re.MULTILINE)
_ANSWER_IS = re.compile(r"(?:final\s+answer|the\s+answer)\s*(?:is|:)\s*:?\s*(.+?)\s*(?:\n|$)", re.IGNORECASE)


def extract_answer(response: str | None) -> str | None:
    """The final answer stated in a model's whole response, or None.

    In order: a JSON object's ``"answer"`` field (the ZeroEval format), the
    last ``\\boxed{...}``, the text after the last "the answer is" / "final
    answer:", the last ``#### ...`` line (GSM8K), else a response of one short
    line as a whole.
    """
    if _missing(response) or not str(response).strip():
        return None
    text = str(response)
    field = json_answer(text)
    if field is not None:
        return field
    inner = boxed(text.replace("\\\\", "\\"))
    if inner is not None:
        return inner
    matches = _ANSWER_IS.findall(text)
    if matches:
        return matches[-1].strip().rstrip(".")
    marked = _HASHES.findall(text)  # GSM8K's "#### 18"
    if marked:
        return marked[-1].strip()
    stripped = text.strip()
    if "\n" not in stripped and len(stripped) <= 100:
        return stripped
    return None
