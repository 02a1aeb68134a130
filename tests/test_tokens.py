"""Token counts: the Rust counter gives the wrapper encoder's counts, and counts what the encoder refuses."""

from __future__ import annotations

import pandas as pd
import pytest

from models.tokens import count_tokens, get_encoding

EDGE_TEXTS = [
    "hello world",
    "<|endoftext|> and <|fim_prefix|> as plain text",
    "naïve café — 東京 🚀 emoji and accents",
    "lone surrogate \ud800 in the middle",
    "tabs\tand\nnewlines\r\n  and   spaces",
    "x" * 5000,
    "1234567890" * 300,
    "def f(x):\n    return x ** 2  # code\n" * 20,
]


@pytest.fixture(scope="module")
def real_prompts(data_dir):
    texts = []
    for name in ("zeroeval-gsm8k.parquet", "mmlu-pro.parquet", "routerbench-subset.parquet"):
        frame = pd.read_parquet(data_dir / "outcomes" / name, columns=["prompt_id", "prompt"])
        texts += frame.drop_duplicates("prompt_id")["prompt"].head(150).tolist()
    return texts


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_counts_equal_the_encoders_token_lists(real_prompts, encoding):
    enc = get_encoding(encoding)
    for text in EDGE_TEXTS + real_prompts:
        assert count_tokens(text, encoding) == len(enc.encode_ordinary(text)), text[:60]


def test_a_text_the_encoder_refuses_is_still_counted():
    unit = "hello world, "
    small, double = count_tokens(unit * 1000), count_tokens(unit * 2000)
    per_unit = double - small  # the count grows by the same number of tokens per repetition
    huge = unit * 80_000  # 1,040,000 characters: encode_ordinary raises "Input too long to encode safely"
    with pytest.raises(ValueError):
        get_encoding().encode_ordinary(huge)
    assert count_tokens(huge) == small + per_unit * 79


def test_empty_text_counts_zero():
    assert count_tokens("") == 0
