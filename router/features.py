"""Prompt features: the one featurizer used at training and at serving time.

A sparse TF-IDF over word unigrams and bigrams, projected to a few dense
components (a truncated SVD fitted on the training prompts), plus surface
statistics of the text (length, tokens, digits, code and maths markers, ...).

Transform is written by hand rather than through scikit-learn's vectorizers so
that featurizing one prompt costs tens of microseconds: the serving path calls
it once per request, and the training path calls the same function over the
unique prompts of the logs, so the two cannot drift apart.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD

from models.tokens import count_tokens

_WORD = re.compile(r"(?u)\b\w\w+\b")
# The same words, found faster: a run of two or more word characters always starts and ends
# at a word boundary when matched left to right and greedily, so the \b's change nothing.
_WORD_RUN = re.compile(r"\w\w+")
_CODE_MARKERS = ("```", "def ", "class ", "return", "import ", "=>", "function", "#include")
_MATH = re.compile(r"\\frac|\\sqrt|\\\w+\{|\$[^$]+\$|\^|\\\(|\\\[")
_OPTION = re.compile(r"(?m)^\s*\(?[A-J][\).:]\s")

_ASCII_ALNUM_SPACE = np.array([chr(i).isalnum() or chr(i).isspace() for i in range(128)])
# the same classes as byte sets, for ASCII text
_DIGITS = bytes(range(48, 58))
_UPPER = bytes(range(65, 91))
_PUNCT = bytes(i for i in range(128) if not _ASCII_ALNUM_SPACE[i])

STAT_NAMES = (
    "log_chars",
    "log_tokens",
    "log_words",
    "log_lines",
    "digit_frac",
    "upper_frac",
    "punct_frac",
    "non_ascii_frac",
    "mean_word_len",
    "n_questions",
    "code_markers",
    "math_markers",
    "n_options",
    "has_blank",
)


def _terms(words: list[str]) -> list[str]:
    """Unigrams and bigrams of lower-cased words."""
    words = [w.lower() for w in words]
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def _lower_terms(lowered: list[str]) -> list[str]:
    """:func:`_terms` of words that are lower-case already (same list, built in C loops)."""
    return lowered + list(map(" ".join, zip(lowered, lowered[1:])))


def _words(text: str) -> tuple[list[str], list[str]]:
    """The words of ``text`` (for the statistics) and their terms (for TF-IDF).

    ASCII text is lower-cased once before the word split: for ASCII, lower-casing
    changes no character class, so the words are those of the original text,
    lower-cased (the statistics only use their count and lengths).
    """
    if text.isascii():
        lowered = _WORD_RUN.findall(text.lower())
        return lowered, _lower_terms(lowered)
    words = _WORD_RUN.findall(text)
    return words, _terms(words)


def _char_classes(text: str) -> tuple[int, int, int, int, int]:
    """Code points, ASCII code points, ASCII digits, ASCII upper-case letters, ASCII punctuation (not alnum, not space)."""
    if text.isascii():  # one C pass per class over the bytes
        raw = text.encode("ascii")
        size = len(raw)
        return (
            size,
            size,
            size - len(raw.translate(None, _DIGITS)),
            size - len(raw.translate(None, _UPPER)),
            size - len(raw.translate(None, _PUNCT)),
        )
    # Character classes counted over a code-point array: a Python loop over
    # every character would cost more than the rest of the decision.
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ascii_cp = cp[cp < 128]
    digits = int(np.count_nonzero((ascii_cp >= 48) & (ascii_cp <= 57)))
    upper = int(np.count_nonzero((ascii_cp >= 65) & (ascii_cp <= 90)))
    alnum_or_space = _ASCII_ALNUM_SPACE[ascii_cp] if len(ascii_cp) else ascii_cp
    punct = int(len(ascii_cp) - np.count_nonzero(alnum_or_space))
    return len(cp), len(ascii_cp), digits, upper, punct


def text_stats(text: str, words: list[str] | None = None, n_tokens: float | None = None) -> np.ndarray:
    """Surface statistics of one prompt, in the order of ``STAT_NAMES``.

    ``words``: the prompt's words if already split (the original or the lower-cased
    words: only their count and lengths are used); ``n_tokens``: its token count if
    already counted.
    """
    n_cp, n_ascii, digits, upper, punct = _char_classes(text)
    n = max(n_cp, 1)
    if words is None:
        words = _WORD.findall(text)
    if n_tokens is None:
        n_tokens = count_tokens(text)
    return np.array(
        [
            math.log1p(len(text)),
            math.log1p(n_tokens),
            math.log1p(len(words)),
            math.log1p(text.count("\n")),
            digits / n,
            upper / n,
            punct / n,
            (n - n_ascii) / n if n_cp else 0.0,
            (sum(map(len, words)) / len(words)) if words else 0.0,
            min(text.count("?"), 20),
            min(sum(text.count(m) for m in _CODE_MARKERS), 50),
            min(len(_MATH.findall(text)), 50),
            min(len(_OPTION.findall(text)), 12),
            float("_" in text),
        ],
        dtype=np.float64,
    )


class TextFeaturizer:
    """Dense features of prompt texts, scikit-learn style.

    Parameters
    ----------
    n_components: dimensions of the SVD projection of the TF-IDF matrix.
    max_features: vocabulary size (most frequent terms by document frequency).
    min_df: minimum number of training prompts a term must occur in.
    random_state: seed of the SVD.
    """

    def __init__(self, n_components: int = 64, max_features: int = 40_000, min_df: int = 2, random_state: int = 0):
        self.n_components = n_components
        self.max_features = max_features
        self.min_df = min_df
        self.random_state = random_state

    def fit(self, texts: Sequence[str]) -> "TextFeaturizer":
        texts = list(texts)
        df: Counter[str] = Counter()
        for text in texts:
            df.update(set(_terms(_WORD.findall(text))))
        kept = [t for t, c in df.items() if c >= self.min_df]
        kept.sort(key=lambda t: (-df[t], t))  # deterministic order
        kept = kept[: self.max_features]
        self.vocabulary_ = {t: i for i, t in enumerate(kept)}
        n = len(texts)
        self.idf_ = np.array([math.log((1 + n) / (1 + df[t])) + 1.0 for t in kept])
        tfidf = self._tfidf_matrix(texts)
        k = max(1, min(self.n_components, tfidf.shape[1] - 1, n - 1))
        if tfidf.shape[1] >= 2 and n >= 2:
            svd = TruncatedSVD(n_components=k, random_state=self.random_state).fit(tfidf)
            self.components_ = np.ascontiguousarray(svd.components_.T)  # (V, k)
        else:  # degenerate vocabulary: no text signal beyond the statistics
            self.components_ = np.zeros((max(tfidf.shape[1], 1), 1))
        stats = np.vstack([text_stats(t) for t in texts]) if texts else np.zeros((0, len(STAT_NAMES)))
        self.stat_mean_ = stats.mean(axis=0) if len(stats) else np.zeros(len(STAT_NAMES))
        self.stat_scale_ = stats.std(axis=0) if len(stats) else np.ones(len(STAT_NAMES))
        self.stat_scale_[self.stat_scale_ == 0] = 1.0
        self.n_features_out_ = self.components_.shape[1] + len(STAT_NAMES)
        return self

    def _weights(self, words: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self._term_weights(_terms(words))

    def _term_weights(self, terms: list[str]) -> tuple[np.ndarray, np.ndarray]:
        vocabulary = self.vocabulary_
        counts = Counter(filter(vocabulary.__contains__, terms))  # first-seen order, as the sums below rely on
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        idx = np.fromiter(map(vocabulary.__getitem__, counts), dtype=np.int64, count=len(counts))
        w = np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
        w += 1.0
        w *= self.idf_[idx]  # (1 + log tf) * idf, in place
        # np.linalg.norm of a vector is sqrt(w.dot(w)); a correctly rounded sqrt either way
        return idx, w / math.sqrt(w.dot(w))

    def _tfidf_matrix(self, texts: Sequence[str]) -> sp.csr_matrix:
        indptr, indices, data = [0], [], []
        for text in texts:
            idx, w = self._weights(_WORD.findall(text))
            indices.append(idx)
            data.append(w)
            indptr.append(indptr[-1] + len(idx))
        shape = (len(texts), len(self.vocabulary_))
        if not texts:
            return sp.csr_matrix(shape)
        return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), np.array(indptr)), shape=shape)

    def transform_one(self, text: str, n_tokens: float | None = None) -> np.ndarray:
        """Features of one prompt (``n_tokens``: its token count, if already counted)."""
        words, terms = _words(text)
        idx, w = self._term_weights(terms)
        emb = w @ self.components_[idx] if len(idx) else np.zeros(self.components_.shape[1])
        stats = (text_stats(text, words, n_tokens) - self.stat_mean_) / self.stat_scale_
        return np.concatenate([emb, stats])

    def transform(self, texts: Iterable[str], n_tokens: Sequence[float] | None = None) -> np.ndarray:
        """Features of prompts (``n_tokens``: their token counts, if already counted)."""
        if n_tokens is None:
            rows = [self.transform_one(t) for t in texts]
        else:
            rows = [self.transform_one(t, k) for t, k in zip(texts, n_tokens)]
        if not rows:
            return np.zeros((0, self.n_features_out_))
        return np.vstack(rows)

    def fit_transform(self, texts: Sequence[str]) -> np.ndarray:
        return self.fit(texts).transform(texts)

    @property
    def feature_names_(self) -> list[str]:
        return [f"svd_{i}" for i in range(self.components_.shape[1])] + list(STAT_NAMES)
