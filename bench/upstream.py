"""A fake LLM upstream on loopback: OpenAI and Anthropic wire formats with a fixed delay.

Written on a bare ``asyncio.Protocol`` (uvloop when installed) rather than a web
framework, so that it is never the bottleneck of a gateway benchmark: a request
costs a header split, one ``json.loads`` and a timer, and the delay is a
``loop.call_later`` with no coroutine behind it.

Endpoints
---------
``POST /v1/chat/completions``  OpenAI chat completions; ``"stream": true`` sends
    server-sent events: a role chunk, ``--chunks`` content chunks (one word each,
    ``--chunk-interval-ms`` apart), a finish chunk, a usage chunk when
    ``stream_options.include_usage`` is set, then ``data: [DONE]``.
``POST /v1/messages``          Anthropic messages, streaming or not (``message_start``
    ... ``message_stop``).
``GET /health``, ``GET /v1/models``  readiness.
``GET /stats``                 requests served so far per endpoint (a gateway that
    answered from a cache would show up here).

The first byte of a response leaves ``--delay-ms`` after the request arrived
(time to first token); the usage fields count the words sent, and
``prompt_tokens`` estimates the prompt at 4 characters a token.

Usage::

    python bench/upstream.py --port 9001 --delay-ms 20 --chunks 20 --chunk-interval-ms 1
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sys
import time

try:
    import orjson

    def dumps(obj) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - the project venv has no orjson

    def dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


WORDS = (
    "The answer follows from the given facts so we compute each step carefully and "
    "then check the result against the question before we write it down"
).split()

_ids = itertools.count(1)
STATS: dict[str, int] = {}


class Config:
    def __init__(self, delay_s: float, chunks: int, chunk_interval_s: float):
        self.delay_s = delay_s
        self.chunks = chunks
        self.chunk_interval_s = chunk_interval_s


def _reason(status: int) -> bytes:
    return {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}.get(status, b"Error")


def _prompt_chars(body: dict) -> int:
    n = 0
    for m in body.get("messages") or ():
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            n += len(c)
        elif isinstance(c, list):
            n += sum(len(p.get("text", "")) for p in c if isinstance(p, dict))
    s = body.get("system")
    if isinstance(s, str):
        n += len(s)
    return n


def _n_words(body: dict, default: int) -> int:
    mt = body.get("max_tokens") or body.get("max_completion_tokens")
    if isinstance(mt, int) and mt > 0:
        return max(1, min(default, mt))
    return default


def _word(i: int) -> str:
    return WORDS[i % len(WORDS)] + " "


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.busy = False
        self.closed = False
        self.keep_alive = True
        self.timer = None

    # -- connection ------------------------------------------------------
    def connection_made(self, transport):
        self.t = transport

    def connection_lost(self, exc):
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data):
        self.buf += data
        self._next_request()

    def _next_request(self):
        """Parse and start one request at a time (pipelined ones wait their turn)."""
        if self.busy or self.closed:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        try:
            method, path, version = head[0].split(" ", 2)
        except ValueError:
            self._send_simple(400, {"error": {"message": "bad request line"}}, close=True)
            return
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body, used = _dechunk(self.buf, start)
            if body is None:
                return  # wait for the rest
            del self.buf[:used]
        else:
            n = int(headers.get("content-length") or 0)
            if len(self.buf) < start + n:
                return
            body = bytes(self.buf[start : start + n])
            del self.buf[: start + n]
        conn = headers.get("connection", "").lower()
        self.keep_alive = conn != "close" and (version.upper() != "HTTP/1.0" or conn == "keep-alive")
        self.busy = True
        self._handle(method, path.split("?", 1)[0], body)

    def _done(self):
        self.busy = False
        if not self.keep_alive:
            self.t.close()
            return
        if self.buf:
            self._next_request()

    # -- responses -------------------------------------------------------
    def _send_simple(self, status: int, obj, close: bool = False):
        payload = dumps(obj)
        conn = b"close" if (close or not self.keep_alive) else b"keep-alive"
        self.t.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: %s\r\n\r\n"
            % (status, _reason(status), len(payload), conn)
            + payload
        )
        if close:
            self.keep_alive = False
        self._done()

    def _handle(self, method: str, path: str, raw: bytes):
        STATS[path] = STATS.get(path, 0) + 1
        if method == "GET":
            if path in ("/health", "/", "/v1/health"):
                return self._send_simple(200, {"status": "ok"})
            if path == "/v1/models":
                return self._send_simple(200, {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "bench"}]})
            if path == "/stats":
                return self._send_simple(200, STATS)
            return self._send_simple(404, {"error": {"message": f"no route {path}"}})
        if method != "POST":
            return self._send_simple(405, {"error": {"message": "method not allowed"}})
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return self._send_simple(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
        if path.endswith("/chat/completions"):
            kind = "openai"
        elif path.endswith("/messages"):
            kind = "anthropic"
        else:
            return self._send_simple(404, {"error": {"message": f"no route {path}"}})
        self.timer = self.loop.call_later(self.cfg.delay_s, self._respond, kind, body)

    def _respond(self, kind: str, body: dict):
        self.timer = None
        if self.closed:
            return
        model = str(body.get("model") or "fake")
        n = _n_words(body, self.cfg.chunks)
        prompt_tokens = max(1, _prompt_chars(body) // 4)
        rid = next(_ids)
        if not body.get("stream"):
            text = "".join(_word(i) for i in range(n))
            if kind == "openai":
                obj = {
                    "id": f"chatcmpl-{rid}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text, "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n},
                    "system_fingerprint": "fp_bench",
                }
            else:
                obj = {
                    "id": f"msg_{rid}",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": prompt_tokens, "output_tokens": n},
                }
            return self._send_simple(200, obj)
        # streaming: chunked transfer encoding of SSE events
        events = _openai_events(model, rid, n, prompt_tokens, body) if kind == "openai" else _anthropic_events(model, rid, n, prompt_tokens)
        self.t.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\nconnection: %s\r\n\r\n" % (b"keep-alive" if self.keep_alive else b"close")
        )
        # the first content word goes out with the headers (time to first token = delay)
        first = 2 if kind == "openai" else 4  # role chunk + first word / message_start..first delta
        self._write_events(events[:first])
        self._stream_rest(events[first:])

    def _write_events(self, events: list[bytes]):
        data = b"".join(events)
        self.t.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _stream_rest(self, events: list[bytes]):
        if self.closed:
            return
        interval = self.cfg.chunk_interval_s
        if interval <= 0 or len(events) <= 1:
            if events:
                self._write_events(events)
            self.t.write(b"0\r\n\r\n")
            return self._done()
        self._write_events(events[:1])
        self.timer = self.loop.call_later(interval, self._stream_rest, events[1:])


def _openai_events(model: str, rid: int, n: int, prompt_tokens: int, body: dict) -> list[bytes]:
    created = int(time.time())
    base = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": created, "model": model, "system_fingerprint": "fp_bench"}

    def ev(choices, **extra):
        return b"data: " + dumps({**base, "choices": choices, **extra}) + b"\n\n"

    out = [ev([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])]
    out += [ev([{"index": 0, "delta": {"content": _word(i)}, "logprobs": None, "finish_reason": None}]) for i in range(n)]
    out.append(ev([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
    if (body.get("stream_options") or {}).get("include_usage"):
        out.append(ev([], usage={"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}))
    # the finish/usage/[DONE] events leave together with the last word
    tail = b"".join(out[n + 1 :]) + b"data: [DONE]\n\n"
    return out[:n] + [out[n] + tail]


def _anthropic_events(model: str, rid: int, n: int, prompt_tokens: int) -> list[bytes]:
    def ev(name: str, obj) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + dumps(obj) + b"\n\n"

    head = [
        ev(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": f"msg_{rid}",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": prompt_tokens, "output_tokens": 1},
                },
            },
        ),
        ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ev("ping", {"type": "ping"}),
    ]
    words = [ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": _word(i)}}) for i in range(n)]
    tail = (
        ev("content_block_stop", {"type": "content_block_stop", "index": 0})
        + ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": n}})
        + ev("message_stop", {"type": "message_stop"})
    )
    words[-1] += tail
    return head + words


def _dechunk(buf: bytearray, pos: int):
    """Body of a chunked request starting at ``pos``: (body, bytes used) or (None, 0) if incomplete."""
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None, 0
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n", pos)  # no trailers expected
            if end < 0:
                return None, 0
            return bytes(out), end + 2
        if len(buf) < pos + size + 2:
            return None, 0
        out += buf[pos : pos + size]
        pos += size + 2


async def serve(host: str, port: int, cfg: Config):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(cfg), host, port, backlog=1024, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port (printed as 'READY <port>')")
    ap.add_argument("--delay-ms", type=float, default=20.0, help="time to the first byte of every response")
    ap.add_argument("--chunks", type=int, default=20, help="words per response (stream chunks)")
    ap.add_argument("--chunk-interval-ms", type=float, default=1.0, help="gap between stream chunks after the first")
    ap.add_argument("--cpus", default=None, help="pin to these CPUs, e.g. '0' or '0,1'")
    args = ap.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("the fake upstream listens on loopback only")
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    cfg = Config(args.delay_ms / 1000.0, args.chunks, args.chunk_interval_ms / 1000.0)
    asyncio.run(serve(args.host, args.port, cfg))


if __name__ == "__main__":
    main()
