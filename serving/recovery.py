"""Mid-stream recovery: finishing an answer whose stream died after part of it reached the client.

When a text stream fails after its first tokens were sent (cut, stall,
malformed event, end without its final event), the dispatcher asks the next
candidate to *continue* the answer and splices the continuation into the
client's stream, so the client reads one answer with one normal end. This
module holds the parts that do not call anything:

* :class:`Transcript` — what the client has been sent: the text, whether it
  is text only (a tool call, a thinking block, a refusal or a second choice
  cannot be continued), and the client-side state a continuation must carry
  on from (the open Anthropic content block, whether the finish was sent).
* :func:`with_prefill` — the continuation request: the delivered text as a
  trailing assistant message (a *prefill*), which Anthropic and some
  OpenAI-compatible servers continue; trailing whitespace is held back
  (Anthropic refuses a prefill ending with it) and matched against the start
  of the continuation.
* :class:`PrefixMatcher` — the part of the continuation the client already
  has: the held-back whitespace after a prefill, or, from a model asked
  without a prefill (it does not support one, or refused it), the whole
  delivered text, which its regenerated answer must start with exactly
  (:class:`ContinuationMismatch` otherwise).
* :class:`Splicer` — the continuation's text and the stream's end, written in
  the client's dialect as if the first model had gone on.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from models.providers import UpstreamStreamError
from models.tokens import count_tokens
from router.prompt import routing_text
from serving import sse
from serving.translate import ANTHROPIC_TO_OPENAI_STOP, OPENAI_TO_ANTHROPIC_STOP
from serving.usage import Usage

Body = dict[str, Any]


class ContinuationMismatch(UpstreamStreamError):
    """A continuation that cannot be spliced: not text, or not starting with the part already delivered."""

    kind = "diverged"


def recoverable_request(body: Mapping[str, Any]) -> bool:
    """Whether a request's stream can be continued: one choice, and no per-token log probabilities."""
    n = body.get("n")
    return (n is None or n == 1) and not body.get("logprobs")


_TEXT_KEYS = frozenset({"role", "content"})
_NOTHING: dict = {}


class Transcript:
    """What the client has been sent of a streamed answer, seen from the upstream events of its first stream.

    ``observer(wire_format)`` is called on each upstream event before it is passed
    on (translated or not); :class:`Splicer` updates it for what it writes.
    """

    __slots__ = ("client", "parts", "plain", "block", "open", "finish_sent", "usage_sent", "id")

    def __init__(self, client_format: str):
        self.client = client_format
        self.parts: list[str] = []
        self.plain = True  # text only, one choice
        self.block = -1  # Anthropic client: index of the last content block started
        self.open = False  # Anthropic client: that block is not stopped yet
        self.finish_sent = False  # OpenAI: a chunk with finish_reason; Anthropic: message_delta
        self.usage_sent = False  # OpenAI: the usage chunk
        self.id: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def observer(self, wire_format: str) -> Callable[[Body], None]:
        """What to call on each upstream event of ``wire_format``, before it is passed on."""
        return self._anthropic if wire_format == "anthropic" else self._openai

    def _openai(self, chunk: Body) -> None:
        if self.id is None:
            self.id = chunk.get("id")
        if chunk.get("usage") and self.client == "openai":
            self.usage_sent = True
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or _NOTHING
            if self.plain and (choice.get("index") or choice.get("logprobs") or not (len(delta) == 1 and "content" in delta)):
                other = delta.keys() - _TEXT_KEYS
                if choice.get("index") or choice.get("logprobs") or (other and any(delta[k] for k in other)):
                    self.plain = False  # a second choice, a tool call, a refusal, reasoning, log probabilities
            text = delta.get("content")
            if text:
                self.parts.append(text)
                if not self.open:  # the translator opens a text block at the first text
                    self.block, self.open = self.block + 1, True
            if choice.get("finish_reason") and self.client == "openai":
                self.finish_sent = True  # (to an Anthropic client the translator sends it at the end only)

    def _anthropic(self, event: Body) -> None:
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                if delta.get("text"):
                    self.parts.append(delta["text"])
            else:
                self.plain = False  # tool input, thinking, signature, citations
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") != "text":
                self.plain = False
            elif block.get("text"):
                self.parts.append(block["text"])
            self.block, self.open = event.get("index", self.block + 1), True
        elif kind == "content_block_stop":
            self.open = False
        elif kind == "message_start":
            self.id = (event.get("message") or {}).get("id")
        elif kind == "message_delta" and (event.get("delta") or {}).get("stop_reason"):
            self.finish_sent = True


def continuation_text(wire_format: str, event: Body, model: str) -> str:
    """The text an upstream event of a continuation adds; :class:`ContinuationMismatch` if it adds anything else."""
    if wire_format == "anthropic":
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") != "text_delta":
                raise _not_text(model)
            return delta.get("text") or ""
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") != "text":
                raise _not_text(model)
            return block.get("text") or ""
        return ""
    text = ""
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        if choice.get("index", 0) != 0 or any(value for key, value in delta.items() if key not in ("role", "content")):
            raise _not_text(model)
        text += delta.get("content") or ""
    return text


def _not_text(model: str) -> ContinuationMismatch:
    return ContinuationMismatch(f"the continuation from model {model!r} is not text", model=model)


def split_prefill(delivered: str) -> tuple[str, str]:
    """The delivered text as a prefill (without trailing whitespace, which Anthropic refuses) and the whitespace held back."""
    prefill = delivered.rstrip()
    return prefill, delivered[len(prefill):]


def with_prefill(body: Body, prefill: str, *, spent_tokens: int = 0) -> Body:
    """``body`` (either wire format) asking for the continuation of ``prefill`` as the assistant's answer.

    A trailing assistant message of the client's own (its prefill) is extended,
    not followed by a second one. The output limit is lowered by the tokens the
    client already has, so the whole answer stays within the limit it asked for.
    """
    messages = list(body.get("messages") or [])
    last = messages[-1] if messages else None
    if isinstance(last, Mapping) and last.get("role") == "assistant":
        content = last.get("content")
        if isinstance(content, str):
            content = content + prefill
        elif isinstance(content, list):
            content = [*content, {"type": "text", "text": prefill}]
        else:
            content = prefill
        messages[-1] = {**last, "content": content}
    else:
        messages.append({"role": "assistant", "content": prefill})
    out = {**body, "messages": messages}
    for key in ("max_tokens", "max_completion_tokens"):
        if isinstance(out.get(key), int) and spent_tokens:
            out[key] = max(1, out[key] - spent_tokens)
    return out


class PrefixMatcher:
    """Drops the start of a continuation that repeats text the client already has.

    ``strict``: the continuation must start with all of ``expected`` (a regenerated
    answer); otherwise (whitespace held back from a prefill) it may start with
    any part of it, and the rest is forwarded from where they differ.
    """

    __slots__ = ("expected", "strict", "model")

    def __init__(self, expected: str, *, strict: bool, model: str | None = None):
        self.expected = expected
        self.strict = strict
        self.model = model

    def feed(self, text: str) -> str:
        """The part of ``text`` to forward."""
        expected = self.expected
        if not expected:
            return text
        n = _common_prefix(text, expected)
        if n == len(text):  # all of it is already delivered (possibly more is expected)
            self.expected = expected[n:]
            return ""
        if n == len(expected):
            self.expected = ""
            return text[n:]
        if self.strict:
            raise self._mismatch()
        self.expected = ""
        return text[n:]

    def finish(self) -> None:
        """At the continuation's end: a regenerated answer shorter than the delivered part does not fit."""
        if self.expected and self.strict:
            raise self._mismatch()

    def _mismatch(self) -> ContinuationMismatch:
        return ContinuationMismatch(
            f"the answer of model {self.model!r} does not start with the part already sent", model=self.model
        )


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def client_finish(wire_format: str, client_format: str, reason: str | None) -> str:
    """An upstream's native finish (stop) reason in the client's dialect."""
    if client_format == "anthropic":
        if wire_format == "anthropic":
            return reason or "end_turn"
        return OPENAI_TO_ANTHROPIC_STOP.get(reason or "stop", "end_turn")
    if wire_format == "openai":
        return reason or "stop"
    return ANTHROPIC_TO_OPENAI_STOP.get(reason or "end_turn", "stop")


class Splicer:
    """Writes a continuation into the client's stream: SSE bytes in its dialect, carrying on from ``transcript``.

    ``model`` is the name the stream started with (the client sees one model
    throughout, as in the response headers); the record names each attempt.
    """

    def __init__(self, transcript: Transcript, model: str, *, include_usage: bool, created: int):
        self.transcript = transcript
        self.model = model
        self.include_usage = include_usage
        self.created = created

    def text(self, text: str) -> bytes:
        t = self.transcript
        t.parts.append(text)
        if t.client == "openai":
            return sse.encode("openai", self._chunk({"content": text}))
        out = b""
        if not t.open:
            t.block, t.open = t.block + 1, True
            out = sse.encode("anthropic", {"type": "content_block_start", "index": t.block,
                                           "content_block": {"type": "text", "text": ""}})
        return out + sse.encode("anthropic", {"type": "content_block_delta", "index": t.block,
                                              "delta": {"type": "text_delta", "text": text}})

    def end(self, finish: str, usage: Usage) -> bytes:
        """What the client still lacks of the stream's end (``finish`` in its dialect; ``usage``: the whole answer's)."""
        t = self.transcript
        parts = []
        if t.client == "openai":
            if not t.finish_sent:
                parts.append(sse.encode("openai", self._chunk({}, finish)))
            if self.include_usage and not t.usage_sent:
                total = {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                         "total_tokens": usage.input_tokens + usage.output_tokens}
                parts.append(sse.encode("openai", {**self._chunk(None), "usage": total}))
        else:
            if t.open:
                parts.append(sse.encode("anthropic", {"type": "content_block_stop", "index": t.block}))
                t.open = False
            if not t.finish_sent:
                parts.append(sse.encode("anthropic", {
                    "type": "message_delta", "delta": {"stop_reason": finish, "stop_sequence": None},
                    "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}}))
            parts.append(sse.encode("anthropic", {"type": "message_stop"}))
        t.finish_sent = True
        return b"".join(parts)

    def _chunk(self, delta: Body | None, finish: str | None = None) -> Body:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return {"id": self.transcript.id or "chatcmpl-thrifty", "object": "chat.completion.chunk",
                "created": self.created, "model": self.model, "choices": choices}


def estimated(usage: Usage, text: str, body: Mapping[str, Any], *, partial: bool) -> Usage:
    """``usage`` with the counts an upstream stream did not report estimated (o200k) from what it sent.

    A stream that failed (``partial``) reported at most its start (Anthropic's
    ``message_start`` counts 1 output token): its output is at least the text it sent.
    """
    if not text or (usage.output_tokens and not partial):
        return usage
    return Usage(usage.input_tokens or count_tokens(routing_text(body)), max(usage.output_tokens, count_tokens(text)))
