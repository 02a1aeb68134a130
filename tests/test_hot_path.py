"""The serving hot path's fast implementations give exactly what the plain ones gave.

* features and decisions: the featurizer's fast paths (ASCII word split and
  character classes, one tokenizer pass per prompt, C-level counting, in-place
  weights) and the router's candidate building are compared bit for bit with
  the previous, straightforward implementations, kept here as the reference;
* the raw SSE parser against the openai SDK's own decoder, on random splits of a stream;
* the request-body JSON parser accepts exactly what ``json.loads`` accepts;
* the idle timer of streams behaves as ``asyncio.timeout`` around each wait;
* passthrough: the upstream's bytes reach the client unchanged when nothing in them must change;
* start-up warm-up, and the access log off by default.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from models.catalog import Catalog, ModelSpec
from models.providers import ProviderPool, UpstreamSettings, UpstreamTimeout
from models.providers.raw import SSEParser
from models.tokens import count_tokens
from router import TextFeaturizer, Threshold, Tradeoff
from router import features as F
from router.decision import Candidate, Decision
from tests.serving_fixtures import ANTHROPIC_UPSTREAM_KEY, OPENAI_UPSTREAM_KEY, fake, fake_server, router_path  # noqa: F401
from tests.synthetic import price_table, synthetic_logs, synthetic_router
from training.dataset import OutcomeMatrix

TABLE = price_table()

EDGE_TEXTS = [
    "",
    " ",
    "a",
    "ab",
    "Hello, World! What's 2+2? (A) 3 (B) 4",
    "İstanbul'da ÇOK güzel bir gün; Ärger über Öl — naïve café",
    "日本語のテキストと English words mixed, 123 numbers",
    "emoji 😀😀 and symbols ∑∫√ and \\frac{1}{2} $x^2$ \\(a\\) \\[b\\]",
    "def f(x):\n    return x  # code\n```python\nimport os\n```\n=> function #include",
    "A) first\nB) second\n(C) third\nD. fourth\n",
    "tabs\tand\nnewlines\r\nand \x0b\x0c\x1c\x1d\x1e\x1f separators",
    "snake_case_words and __dunder__ and a_b c_d_e",
    "UPPER lower MiXeD 0123456789 !@#$%^&*()_+-=[]{}|;:'\",.<>/?`~",
    "x" * 5000,
    "word " * 800,
    "\u00e9" * 10 + " non-ascii only \u2028\u2029",
    "ﬁ ligature ß Straße ǅ title-case Ω ohm",
]


# -- the reference: the featurizer and candidate building as they were before the fast paths -------
def _ref_terms(words):
    words = [w.lower() for w in words]
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def _ref_text_stats(text, words=None):
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    n = max(len(cp), 1)
    ascii_cp = cp[cp < 128]
    digits = int(np.count_nonzero((ascii_cp >= 48) & (ascii_cp <= 57)))
    upper = int(np.count_nonzero((ascii_cp >= 65) & (ascii_cp <= 90)))
    alnum_or_space = F._ASCII_ALNUM_SPACE[ascii_cp] if len(ascii_cp) else ascii_cp
    punct = int(len(ascii_cp) - np.count_nonzero(alnum_or_space))
    if words is None:
        words = F._WORD.findall(text)
    return np.array(
        [
            math.log1p(len(text)),
            math.log1p(count_tokens(text)),
            math.log1p(len(words)),
            math.log1p(text.count("\n")),
            digits / n,
            upper / n,
            punct / n,
            (n - len(ascii_cp)) / n if len(cp) else 0.0,
            (sum(map(len, words)) / len(words)) if words else 0.0,
            min(text.count("?"), 20),
            min(sum(text.count(m) for m in F._CODE_MARKERS), 50),
            min(len(F._MATH.findall(text)), 50),
            min(len(F._OPTION.findall(text)), 12),
            float("_" in text),
        ],
        dtype=np.float64,
    )


def _ref_weights(featurizer, words):
    vocabulary = featurizer.vocabulary_
    counts = Counter(t for t in _ref_terms(words) if t in vocabulary)
    if not counts:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    idx = np.fromiter((vocabulary[t] for t in counts), dtype=np.int64, count=len(counts))
    tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    w = (1.0 + np.log(tf)) * featurizer.idf_[idx]
    return idx, w / np.linalg.norm(w)


def _ref_transform_one(featurizer, text):
    words = F._WORD.findall(text)
    idx, w = _ref_weights(featurizer, words)
    emb = w @ featurizer.components_[idx] if len(idx) else np.zeros(featurizer.components_.shape[1])
    stats = (_ref_text_stats(text, words) - featurizer.stat_mean_) / featurizer.stat_scale_
    return np.concatenate([emb, stats])


def _ref_route(router, text, prices, policy=None, *, allowed=None, min_quality=None, max_cost=None, version=None):
    policy = policy or router.policy_
    tokens = np.array([count_tokens(text)], dtype=np.float64)
    X = np.vstack([_ref_transform_one(router.featurizer_, text)])
    s = router.score_features(X, tokens, prices, allowed)
    p, cost = s.p[0], s.cost[0]
    mask = np.ones_like(p, dtype=bool)
    if min_quality is not None:
        mask &= p >= min_quality
    if max_cost is not None:
        mask &= cost <= max_cost
    fallback = False
    if not mask.any():
        mask, fallback = np.ones_like(p, dtype=bool), True
    idx, fb = policy.choose(p[None], cost[None], mask[None], s.models)
    chosen = int(idx[0])
    acceptable = policy.acceptable(p, cost, mask)
    order = policy.rank(p, cost, mask)
    order = [chosen] + [j for j in order if j != chosen]
    candidates = tuple(
        Candidate(
            model=s.models[j],
            p_success=float(p[j]),
            expected_input_tokens=float(s.input_tokens[0]),
            expected_output_tokens=float(s.output_tokens[0, j]),
            expected_cost=float(cost[j]),
            acceptable=bool(acceptable[j]),
        )
        for j in order
    )
    return Decision(model=s.models[chosen], candidates=candidates, policy=policy.name, knob=float(policy.knob),
                    fallback=fallback or bool(fb[0]), router_version=version, novelty=float(s.novelty[0]))


# -- corpora and routers ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_prompts(data_dir):
    frame = pd.read_parquet(data_dir / "outcomes" / "zeroeval-gsm8k.parquet", columns=["prompt_id", "prompt"])
    return frame.drop_duplicates("prompt_id")["prompt"].head(300).tolist()


@pytest.fixture(scope="module")
def matrix():
    return OutcomeMatrix.from_frame(synthetic_logs(300, seed=3))


@pytest.fixture(scope="module", params=["logistic", "lightgbm"])
def router(request, matrix):
    return synthetic_router(request.param, matrix, n_estimators=150)


def _corpus(matrix, real_prompts):
    rng = random.Random(0)
    mutated = [t.upper() if i % 3 == 0 else t.replace(" ", "  ") for i, t in enumerate(real_prompts[:40])]
    mixed = [f"{a} {b}" for a, b in zip(EDGE_TEXTS, rng.sample(real_prompts, len(EDGE_TEXTS)))]
    return EDGE_TEXTS + list(matrix.texts[:60]) + real_prompts + mutated + mixed


def test_word_split_fast_path_finds_the_same_words(matrix, real_prompts):
    for text in _corpus(matrix, real_prompts):
        words = F._WORD.findall(text)
        fast_words, terms = F._words(text)
        assert [w.lower() for w in words] == [w.lower() for w in fast_words]
        assert len(words) == len(fast_words) and sum(map(len, words)) == sum(map(len, fast_words))
        assert terms == _ref_terms(words)


def test_text_stats_fast_path_is_bit_identical(matrix, real_prompts):
    for text in _corpus(matrix, real_prompts):
        expected = _ref_text_stats(text)
        words, _ = F._words(text)
        for got in (F.text_stats(text), F.text_stats(text, words), F.text_stats(text, words, float(count_tokens(text)))):
            assert got.tobytes() == expected.tobytes(), text[:60]


def test_features_are_bit_identical_to_the_reference(matrix, real_prompts):
    featurizer = TextFeaturizer(n_components=16).fit(list(matrix.texts) + real_prompts[:150])
    corpus = _corpus(matrix, real_prompts)
    expected = np.vstack([_ref_transform_one(featurizer, t) for t in corpus])
    assert featurizer.transform(corpus).tobytes() == expected.tobytes()
    tokens = [float(count_tokens(t)) for t in corpus]
    assert featurizer.transform(corpus, n_tokens=tokens).tobytes() == expected.tobytes()
    # fitting goes through the same weights: the TF-IDF matrix is unchanged
    for text in corpus[:50]:
        ref_idx, ref_w = _ref_weights(featurizer, F._WORD.findall(text))
        idx, w = featurizer._weights(F._WORD.findall(text))
        assert idx.tobytes() == ref_idx.tobytes() and w.tobytes() == ref_w.tobytes()


@pytest.mark.parametrize("policy", [None, Threshold(0.3), Threshold(0.99), Tradeoff(0.0), Tradeoff(500.0)],
                         ids=["default", "th0.3", "th0.99", "tr0", "tr500"])
def test_decisions_are_identical_to_the_reference(router, matrix, real_prompts, policy):
    corpus = _corpus(matrix, real_prompts)[::3]
    for i, text in enumerate(corpus):
        kw = {}
        if i % 4 == 1:
            kw["min_quality"] = 0.5
        elif i % 4 == 2:
            kw["max_cost"] = 1e-5
        elif i % 4 == 3:
            kw["allowed"] = ["large", "small"]
        got = router.route(text, TABLE, policy, version="v1", **kw)
        expected = _ref_route(router, text, TABLE, policy, version="v1", **kw)
        assert got == expected
        assert [type(c.p_success) for c in got.candidates] == [float] * len(got.candidates)
        assert all(type(c.acceptable) is bool for c in got.candidates)


# -- SSE parsing against the SDK's decoder ---------------------------------------------------------
def _sdk_events(raw: bytes) -> list[tuple[str | None, str]]:
    from openai._streaming import SSEDecoder

    return [(sse.event, sse.data) for sse in SSEDecoder().iter_bytes(iter([raw]))]


SSE_STREAMS = [
    b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n',
    b'event: message_start\ndata: {"type": "message_start"}\n\n: keep-alive\n\nevent: ping\ndata: {"type": "ping"}\n\n'
    b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {"text": "h\\u00e9llo\\n"}}\n\n',
    b'data: {"a": 1}\r\n\r\ndata:{"b": 2}\r\n\r\nevent:x\r\ndata: line one\r\ndata: line two\r\n\r\n',
    b'data: {"a": 1}\r\rdata: {"b": "\xc3\xa9\xe2\x82\xac"}\r\r',
    b': comment only\n\n\n\ndata: {"after": "blank lines"}\n\nretry: 10\ndata: x\n\n',
    b'data: {"complete": true}\n\ndata: {"incomplete": ',  # the last event never ends: dropped
]


@pytest.mark.parametrize("raw", SSE_STREAMS)
def test_sse_parser_matches_the_sdk_decoder_on_any_split(raw):
    expected = [e for e in _sdk_events(raw) if e[1] or e[0]]
    rng = random.Random(len(raw))
    for trial in range(60):
        parser, got = SSEParser(), []
        cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(0, 8)))) if trial else []
        for start, end in zip([0] + cuts, cuts + [len(raw)]):
            got += [(name, data.decode()) for name, data, _ in parser.feed(raw[start:end])]
        got += [(name, data.decode()) for name, data, _ in parser.finish()]
        assert got == expected, (trial, cuts)


def test_sse_parser_keeps_each_event_raw_bytes():
    parser = SSEParser()
    events = parser.feed(b'data: {"a": 1}\n\nevent: e\ndata: {"b": 2}\n\n')
    assert [raw for _, _, raw in events] == [b'data: {"a": 1}\n\n', b'event: e\ndata: {"b": 2}\n\n']


# -- the request body parser --------------------------------------------------------------------
@pytest.mark.parametrize("raw", [
    b'{"a": 1}', b' {"a": [1, 2.5, -0, 1e400, "x"]} ', b'{"a": NaN, "b": Infinity}', b'{"a": "\\ud800"}',
    b'\xef\xbb\xbf{"a": 1}', b'{"a": "x\ny"}', b'{"a": 01}', b'{"a": 1,}', b'{"a": 1} x', b'"\xff"', b'[1]' * 2,
    b'{"a":' * 400 + b'1' + b'}' * 400, b'{"a": 123456789012345678901234567890}', b'{"a": 1, "a": 2}',
])
def test_fast_json_accepts_exactly_what_json_accepts(raw):
    from serving.fastjson import loads

    try:
        expected = ("ok", json.loads(raw))
    except (ValueError, RecursionError) as exc:
        expected = ("error", type(exc))
    try:
        got = ("ok", loads(raw))
    except (ValueError, RecursionError) as exc:
        got = ("error", type(exc))
    if expected[0] == "ok":
        assert got[0] == "ok" and repr(got[1]) == repr(expected[1])
    else:
        assert got == expected  # the same exception type, hence the same message path


# -- the stream idle timer --------------------------------------------------------------------------
def test_idle_timer_times_out_a_silent_wait_only():
    from serving.dispatch import IdleTimer

    async def main():
        timer = IdleTimer(0.2, "m")
        started = time.monotonic()
        for _ in range(12):  # 12 quick events, longer than the idle time in total
            await timer.wait(asyncio.sleep(0.03))
        assert time.monotonic() - started > 0.3
        with pytest.raises(UpstreamTimeout, match="stalled: no event for 0.2s"):
            await timer.wait(asyncio.sleep(5))
        assert asyncio.current_task().cancelling() == 0  # the timer's own cancellation was taken back
        await timer.wait(asyncio.sleep(0.01))  # usable again
        timer.stop()

    asyncio.run(main())


def test_idle_timer_lets_an_outside_cancellation_through():
    from serving.dispatch import IdleTimer

    async def waiter(timer):
        await timer.wait(asyncio.sleep(5))

    async def main():
        timer = IdleTimer(10.0, "m")
        task = asyncio.create_task(waiter(timer))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        timer.stop()
        # and inside an outer deadline: the outer timeout wins, as TimeoutError
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await IdleTimer(10.0, "m").wait(asyncio.sleep(5))

    asyncio.run(main())


# -- passthrough bytes --------------------------------------------------------------------------
def test_passthrough_forwards_the_upstream_bytes_unchanged(fake, fake_server):
    from serving.dispatch import Dispatcher

    url = fake_server[1]
    catalog = Catalog([ModelSpec("same", "openai", "same", 1.0, 2.0, base_url=f"{url}/v1"),
                       ModelSpec("renamed", "openai", "gpt-up", 1.0, 2.0, base_url=f"{url}/v1")])
    pool = ProviderPool({"openai": UpstreamSettings(api_key=OPENAI_UPSTREAM_KEY),
                         "anthropic": UpstreamSettings(api_key=ANTHROPIC_UPSTREAM_KEY)}, env={})
    body = {"model": "x", "messages": [{"role": "user", "content": "hello"}]}

    async def main():
        dispatcher = Dispatcher(catalog, pool)
        try:
            same = await dispatcher.complete("openai", body, ["same"], [])
            renamed = await dispatcher.complete("openai", body, ["renamed"], [])
            opened = await dispatcher.open_stream("openai", {**body, "stream": True}, ["same"], [])
            parts = [part async for part in opened.events]
            return same, renamed, parts
        finally:
            await pool.aclose()

    same, renamed, parts = asyncio.run(main())
    assert same.raw is not None and json.loads(same.raw) == same.body and same.body["model"] == "same"
    assert renamed.raw is None and renamed.body["model"] == "renamed"  # re-encoded with the catalog id
    assert all(isinstance(p, tuple) for p in parts) and parts[-1][1] is True  # bytes, the last part final
    events = [json.loads(line[6:]) for p, _ in parts for line in p.decode().split("\n\n") if line.startswith("data: ")]
    assert events and all(e["model"] == "same" for e in events)
    assert "".join((e["choices"][0]["delta"].get("content") or "") for e in events if e["choices"]) == "Answer from same."
    assert not any("usage" in e for e in events)  # thrifty asked for usage; the client did not


def test_warm_up_loads_the_tokenizer_and_the_sdk_clients(fake_server, router_path, tmp_path):
    from models.tokens import _counter, get_encoding
    from serving.app import create_app
    from tests.fakes.server import serve_in_thread
    from tests.serving_fixtures import make_config

    get_encoding.cache_clear()
    _counter.cache_clear()
    app = create_app(make_config(tmp_path, fake_server[1], router_path))
    with serve_in_thread(app):
        assert get_encoding.cache_info().currsize >= 1 and _counter.cache_info().currsize >= 1
        assert len(app.state.services.pool._clients) >= 2  # one OpenAI and one Anthropic client, built at startup


def test_access_log_is_off_by_default_and_configurable(monkeypatch, tmp_path):
    import uvicorn
    from click.testing import CliRunner

    from serving.cli import serve
    from serving.config import ServingConfig

    assert ServingConfig().access_log is False
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: calls.append(kw))
    monkeypatch.setattr("serving.app.create_app", lambda config, **parts: object())
    monkeypatch.setattr("serving.services.preflight", lambda config: (None, None))  # no router to check here
    config = tmp_path / "c.yaml"
    config.write_text("router_uri: r.joblib\n")
    for args, expected in (([], False), (["--access-log"], True)):
        assert CliRunner().invoke(serve, ["--config", str(config), *args]).exit_code == 0
        assert calls[-1]["access_log"] is expected
