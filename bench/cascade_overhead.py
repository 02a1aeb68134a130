"""Serving overhead of a cascade beyond its upstream calls (issue 14 target: <= 2 ms at p50).

thrifty runs in this process on loopback (uvicorn in a thread) in front of the
fake provider server (``tests/fakes/provider.py``, instant answers, on its own
loopback port). Each request's upstream time is measured inside thrifty: every
upstream call (the provider's ``send_raw``: the SDK's request, the HTTP round
trip, reading the answer) is timed, and a stage's
upstream time is its wall time (first call start to last call end; the calls
run in parallel). The overhead of a request is the time the client waited minus
the sum of its stages' upstream times: the HTTP hop to thrifty, routing (the
router scores the prompt for the cascade's models), dispatch (request bodies,
translation, attempt records), the answer extraction and
the decisions between stages, the budget-free admission, the store write and the
response. Two cascade shapes: accepted at stage 1 (two calls), and escalated to
stage 2 (three calls, two stages); and, for reference, one call to a catalog
model through the same server (passthrough).

    python bench/cascade_overhead.py --requests 300

Results: ``bench/results/cascade_overhead.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine_info, percentiles, write_json  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="timed requests per shape (after 20 warm-up requests)")
    args = parser.parse_args(argv)

    import httpx

    from router.profiles import Profile, save_profile
    from serving.app import create_app
    from models.providers.sdk import SDKProvider
    from tests.fakes.provider import FakeProvider
    from tests.fakes.server import ThreadedServer
    from tests.serving_fixtures import CLIENT_KEY, OPENAI_UPSTREAM_KEY, ANTHROPIC_UPSTREAM_KEY, fit_test_router, make_config
    from tests.test_cascade_serving import AGREE, CASCADE, DISAGREE, cue

    calls: list[tuple[float, float]] = []  # (start, end) of every upstream call of the current request
    original = SDKProvider.send_raw

    async def timed(self, *a, **kw):
        start = time.perf_counter()
        try:
            return await original(self, *a, **kw)
        finally:
            calls.append((start, time.perf_counter()))

    SDKProvider.send_raw = timed
    fake = FakeProvider(api_keys={OPENAI_UPSTREAM_KEY, ANTHROPIC_UPSTREAM_KEY})
    upstream = ThreadedServer(fake.app).start()
    cue(fake)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        router = fit_test_router(tmp / "router.joblib")
        config = make_config(tmp, upstream.url, router, store_responses=False)
        save_profile(Profile(name=CASCADE.name, cascade=CASCADE.to_dict()), config.profiles_dir)
        server = ThreadedServer(create_app(config)).start()
        shapes = {
            "cascade_stage1": (CASCADE.name, AGREE, [2]),
            "cascade_stage2": (CASCADE.name, DISAGREE, [2, 1]),
            "single_call": ("oai-mini", AGREE, [1]),
        }
        results = {}
        try:
            with httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {CLIENT_KEY}"}, timeout=30) as client:
                for name, (model, prompt, stages) in shapes.items():
                    totals, upstreams, overheads = [], [], []
                    for i in range(20 + args.requests):
                        calls.clear()
                        start = time.perf_counter()
                        response = client.post("/v1/chat/completions", json={"model": model, "max_tokens": 50,
                                                                               "messages": [{"role": "user", "content": prompt}]})
                        total = time.perf_counter() - start
                        assert response.status_code == 200, response.text
                        assert len(calls) == sum(stages), (name, calls)
                        ordered = sorted(calls)
                        spent, k = 0.0, 0
                        for n in stages:  # stages run one after the other; a stage's calls in parallel
                            group = ordered[k:k + n]
                            spent += max(e for _, e in group) - min(s for s, _ in group)
                            k += n
                        if i >= 20:
                            totals.append(total * 1e3)
                            upstreams.append(spent * 1e3)
                            overheads.append((total - spent) * 1e3)
                    results[name] = {
                        "trace": response.headers.get("x-thrifty-cascade"),
                        "request_ms": percentiles(totals),
                        "upstream_ms": percentiles(upstreams),
                        "overhead_ms": percentiles(overheads),
                    }
                    print(f"{name:16s} trace={results[name]['trace']}  overhead p50 {results[name]['overhead_ms']['p50']:.2f} ms "
                          f"(request p50 {results[name]['request_ms']['p50']:.2f} ms, upstream p50 {results[name]['upstream_ms']['p50']:.2f} ms)")
        finally:
            server.stop()
            upstream.stop()
    extra = {
        name: round(results[name]["overhead_ms"]["p50"] - results["single_call"]["overhead_ms"]["p50"], 3)
        for name in ("cascade_stage1", "cascade_stage2")
    }
    out = {
        "what": "client-observed request time minus the upstream time of its stages (wall time of each stage's parallel "
                "provider send_raw calls), "
                "thrifty and the fake upstream on loopback, no budgets, SQLite store",
        "requests": args.requests,
        "results": results,
        "cascade_minus_single_call_overhead_p50_ms": extra,
        "target_p50_ms": 2.0,
        "target_met": all(results[n]["overhead_ms"]["p50"] <= 2.0 for n in ("cascade_stage1", "cascade_stage2")),
        "machine": machine_info(),
        "command": "python bench/cascade_overhead.py --requests " + str(args.requests),
    }
    path = write_json("cascade_overhead", out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
