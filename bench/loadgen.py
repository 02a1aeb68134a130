"""Closed-loop load generator: fixed concurrency, bounded request count and duration.

One asyncio process (uvloop when installed) with an aiohttp client keeping its
connections alive. ``--concurrency`` workers each send a request, wait for
the whole response, and send the next, until ``--requests`` have been issued
or ``--duration`` seconds have passed, whichever comes first. A ``--warmup``
phase at the same concurrency precedes the measurement and is not counted.

Per request it records the latency to the last byte and, for streams, the time
to the first byte of the body and to the first content token (the first SSE
event carrying non-empty text: ``delta.content`` for OpenAI, ``text_delta``
for Anthropic). Errors: a non-2xx status, an exception (connect, reset,
timeout), a non-stream body without a message, or a stream that ends without
its terminator (``data: [DONE]`` / ``message_stop``).

The process pins itself to ``--cpus`` (default: the CPUs not given to the
servers) and reports the pinning and its own CPU use, so a saturated load
generator is visible in the results.

Targets are restricted to loopback. Prints one JSON object on stdout.

    python bench/loadgen.py --url http://127.0.0.1:9001/v1/chat/completions \
        --model fake --concurrency 50 --duration 10 --requests 20000 --stream
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import re
import resource
import sys
import time
from urllib.parse import urlparse

import aiohttp
import numpy as np

_OPENAI_CONTENT = re.compile(rb'"content"\s*:\s*"(?!")')
_ANTHROPIC_CONTENT = re.compile(rb'"text_delta"')
MAX_REQUESTS = 1_000_000
MAX_DURATION_S = 900.0

DEFAULT_PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Write a Python function that returns the n-th Fibonacci number using memoization.",
    "Summarize the causes of the French Revolution in three sentences.",
]


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    sys.exit(f"loadgen: refusing non-loopback target {url!r}")


def summarize(values) -> dict | None:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return None
    q = np.percentile(a, [50, 90, 99, 99.9])
    return {
        "n": int(a.size),
        "p50": float(q[0]),
        "p90": float(q[1]),
        "p99": float(q[2]),
        "p999": float(q[3]),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


class Runner:
    def __init__(self, args, prompts: list[str]):
        self.args = args
        self.prompts = prompts
        self.fmt = args.format
        self.headers = {"content-type": "application/json", "authorization": f"Bearer {args.api_key}"}
        if self.fmt == "anthropic":
            self.headers.update({"x-api-key": args.api_key, "anthropic-version": "2023-06-01"})
        self.content_re = _ANTHROPIC_CONTENT if self.fmt == "anthropic" else _OPENAI_CONTENT
        self.terminator = b"message_stop" if self.fmt == "anthropic" else b"[DONE]"
        self.bodies = [self._body(p) for p in prompts]

    def _body(self, prompt: str) -> bytes:
        a = self.args
        body = {"model": a.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": a.max_tokens}
        if a.stream:
            body["stream"] = True
        return json.dumps(body).encode()

    async def one(self, session: aiohttp.ClientSession, i: int, url: str) -> dict:
        body = self.bodies[i % len(self.bodies)]
        t0 = time.perf_counter()
        rec = {"t0": t0}
        try:
            async with session.post(url, data=body, headers=self.headers) as resp:
                status = resp.status
                if not self.args.stream or status >= 300:
                    data = await resp.read()
                    t1 = time.perf_counter()
                    rec["latency"] = t1 - t0
                    if status >= 300:
                        rec["error"] = f"http_{status}"
                        rec["detail"] = data[:300].decode("utf-8", "replace")
                    elif not self._complete_body(data):
                        rec["error"] = "bad_body"
                        rec["detail"] = data[:300].decode("utf-8", "replace")
                    return rec
                ttfb = ttft = None
                tail = b""
                async for chunk in resp.content.iter_any():
                    now = time.perf_counter()
                    if ttfb is None:
                        ttfb = now - t0
                    if ttft is None and self.content_re.search(tail[-64:] + chunk):
                        ttft = now - t0
                    tail = (tail + chunk)[-256:]
                t1 = time.perf_counter()
                rec.update(latency=t1 - t0, ttfb=ttfb, ttft=ttft)
                if self.terminator not in tail:
                    rec["error"] = "truncated_stream"
                    rec["detail"] = tail[-200:].decode("utf-8", "replace")
                elif ttft is None:
                    rec["error"] = "no_content"
        except asyncio.TimeoutError:
            rec.update(latency=time.perf_counter() - t0, error="timeout")
        except aiohttp.ClientError as exc:
            rec.update(latency=time.perf_counter() - t0, error=type(exc).__name__, detail=str(exc)[:200])
        return rec

    def _complete_body(self, data: bytes) -> bool:
        try:
            obj = json.loads(data)
        except ValueError:
            return False
        if self.fmt == "anthropic":
            return bool(obj.get("content"))
        try:
            return obj["choices"][0]["message"]["content"] is not None
        except (KeyError, IndexError, TypeError):
            return False

    async def phase(self, session, n_max: int, duration: float) -> tuple[list[dict], float]:
        """Run ``concurrency`` closed loops until ``n_max`` requests or ``duration`` seconds (loop k sends to URL k mod n)."""
        issued = 0
        results: list[dict] = []
        deadline = time.perf_counter() + duration
        offset = random.randrange(len(self.bodies))

        async def worker(url: str):
            nonlocal issued
            while issued < n_max and time.perf_counter() < deadline:
                i = issued
                issued += 1
                results.append(await self.one(session, offset + i, url))

        urls = self.args.url
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(urls[k % len(urls)]) for k in range(self.args.concurrency)))
        return results, time.perf_counter() - t0

    async def run(self) -> dict:
        a = self.args
        timeout = aiohttp.ClientTimeout(total=a.timeout)
        conn = aiohttp.TCPConnector(limit=a.concurrency, limit_per_host=a.concurrency, keepalive_timeout=60, force_close=False)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
            if a.warmup:
                await self.phase(session, a.warmup, a.duration)
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            results, elapsed = await self.phase(session, a.requests, a.duration)
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        ok = [r for r in results if "error" not in r]
        errors: dict[str, int] = {}
        samples: dict[str, str] = {}
        for r in results:
            if "error" in r:
                errors[r["error"]] = errors.get(r["error"], 0) + 1
                samples.setdefault(r["error"], r.get("detail", ""))
        ms = 1000.0
        out = {
            "url": a.url[0],
            "urls": a.url,
            "format": a.format,
            "model": a.model,
            "stream": a.stream,
            "concurrency": a.concurrency,
            "requests": len(results),
            "ok": len(ok),
            "errors": sum(errors.values()),
            "error_kinds": errors,
            "error_samples": samples,
            "elapsed_s": elapsed,
            "throughput_rps": len(ok) / elapsed if elapsed > 0 else 0.0,
            "latency_ms": summarize([r["latency"] * ms for r in ok]),
            "ttfb_ms": summarize([r["ttfb"] * ms for r in ok if r.get("ttfb") is not None]) if a.stream else None,
            "ttft_ms": summarize([r["ttft"] * ms for r in ok if r.get("ttft") is not None]) if a.stream else None,
            "loadgen": {
                "cpus": sorted(os.sched_getaffinity(0)),
                "cpu_s": cpu,
                "cpu_util": cpu / max(elapsed, 1e-9),  # ~1.0 means the load generator was the bottleneck
                "warmup_requests": a.warmup,
                "limits": {"requests": a.requests, "duration_s": a.duration},
            },
        }
        if a.raw:
            with open(a.raw, "w") as fh:
                json.dump([{k: v for k, v in r.items() if k != "detail"} for r in results], fh)
        return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, action="append",
                    help="full endpoint URL on loopback; repeat to spread the concurrent loops over several servers")
    ap.add_argument("--format", choices=("openai", "anthropic"), default="openai")
    ap.add_argument("--model", default="fake")
    ap.add_argument("--api-key", default="sk-bench")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=1000, help=f"stop after this many (at most {MAX_REQUESTS})")
    ap.add_argument("--duration", type=float, default=10.0, help=f"stop after this many seconds (at most {MAX_DURATION_S:.0f})")
    ap.add_argument("--warmup", type=int, default=0, help="unmeasured requests first")
    ap.add_argument("--max-tokens", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    ap.add_argument("--prompts", default=None, help="JSON list of prompt strings to cycle through")
    ap.add_argument("--cpus", default=None, help="pin to these CPUs, e.g. '1'")
    ap.add_argument("--raw", default=None, help="also write every request's record to this JSON file")
    ap.add_argument("--out", default=None, help="write the summary here as well as to stdout")
    args = ap.parse_args(argv)
    args.requests = max(1, min(args.requests, MAX_REQUESTS))
    args.duration = max(0.1, min(args.duration, MAX_DURATION_S))
    args.concurrency = max(1, min(args.concurrency, 1000))
    return args


def main(argv=None):
    args = parse_args(argv)
    for url in args.url:
        check_loopback(url)
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    prompts = DEFAULT_PROMPTS
    if args.prompts:
        with open(args.prompts) as fh:
            prompts = json.load(fh) or DEFAULT_PROMPTS
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out = asyncio.run(Runner(args, prompts).run())
    text = json.dumps(out, indent=1)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
