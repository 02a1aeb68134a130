"""Serving a cascade profile: its stages' calls through the dispatcher, :meth:`router.cascade.Cascade.decide` between them.

A request to a cascade profile (``"model": "<profile>"`` whose profile holds a
:class:`router.cascade.Cascade`) runs the stages of ``cascade.plan(p)`` in order:

* a stage's models are called in parallel (``asyncio.gather``), each call by
  :meth:`serving.dispatch.Dispatcher.complete` — the one dispatch path of every
  call: fail-over to the model's configured ``fallbacks``, same-model retries,
  circuit breakers, attempt timeouts, all under the request's one deadline.
  A call that fails whatever fail-over does counts as "no answer" (a client
  error — a 4xx the client must fix — ends the request at once);
* the answer of each call is extracted from its text
  (:func:`router.answers.extract_answer`) and the cascade decides: return the
  stage's candidate answer, or go on (the last stage always answers);
* the response is the accepted call's, in the client's wire format (a stage
  model of the other format is translated, as any single call is).

:func:`stage_trace` renders the header ``x-thrifty-cascade``: the stages run,
``;``-separated, each ``<stage>:<models>=<verdict>`` with the stage's 1-based
number, its models comma-separated — ``a>b`` when fallback ``b`` answered for
``a``, ``a!`` when ``a`` gave no answer — and the verdict ``accept`` (the stage's
test passed), ``disagree`` (an agreement test failed), ``reject`` (any other test
failed) or ``answer`` (the last stage). E.g. ``1:gpt-a,gpt-b=disagree;2:gpt-c=answer``.
A stage skipped by its gate (``enter``) is absent.

Streaming clients: the stages run non-streaming, and the accepted answer is
then sent as one SSE stream in the client's dialect (:func:`answer_events`), so
the first token arrives only when the accepting stage has finished.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from models.providers import UpstreamBadRequest, UpstreamError
from models.store import AttemptRecord
from router.answers import extract_answer
from router.cascade import Agreement, Cascade, Verdict
from serving.dispatch import Answer, Dispatcher
from serving.errors import InvalidRequest, ServingError
from serving.reliability import Deadline
from serving.tracing import NO_TRACE, NoTrace, RequestTrace

Body = dict[str, Any]
HEADER = "x-thrifty-cascade"


@dataclass
class Call:
    """One model's call in a stage: the answer it gave (or its failure)."""

    model: str  # the stage's model
    answer: Answer | None = None
    error: Exception | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)

    @property
    def answered_by(self) -> str | None:
        return None if self.answer is None else self.answer.spec.id


@dataclass
class StageRun:
    stage: int  # 0-based
    calls: list[Call]
    verdict: Verdict
    test: str  # the acceptance test's name
    answers: dict[str, str | None]  # stage model -> extracted answer
    client_error: Exception | None = None  # a call's 4xx: the client's to fix, ends the request

    @property
    def outcome(self) -> str:
        if self.verdict.final:
            return "answer"
        if self.verdict.accept:
            return "accept"
        return "disagree" if self.test == Agreement.name else "reject"


@dataclass
class CascadeRun:
    answer: Answer  # the accepted call's answer
    stages: list[StageRun]
    calls: list[Call]  # every call, in call order

    @property
    def answered_model(self) -> str:
        return self.answer.spec.id

    def record(self, profile: str, cascade: Cascade) -> dict:
        """What the outcome store keeps of the run (``DecisionRecord.cascade``)."""
        return {
            "profile": profile,
            "cascade": cascade.describe(),
            "answer_kind": cascade.answer_kind,
            "answered_by": self.answered_model,
            "stages": [
                {
                    "stage": s.stage + 1,
                    "models": [c.model for c in s.calls],
                    "answered_by": {c.model: c.answered_by for c in s.calls},
                    "answers": s.answers,
                    "outcome": s.outcome,
                    "score": s.verdict.score if math.isfinite(s.verdict.score) else None,
                    "support": s.verdict.support,
                }
                for s in self.stages
            ],
        }


def failed_record(profile: str, cascade: Cascade, stages: Sequence[StageRun]) -> dict:
    """What the outcome store keeps of a run that gave no answer."""
    return {
        "profile": profile,
        "cascade": cascade.describe(),
        "answer_kind": cascade.answer_kind,
        "answered_by": None,
        "stages": [{"stage": s.stage + 1, "models": [c.model for c in s.calls], "answered_by": {c.model: c.answered_by for c in s.calls},
                    "answers": s.answers, "outcome": s.outcome} for s in stages],
    }


class CascadeFailed(Exception):
    """No stage produced an answer to return; ``error`` is the failure to report (the last call's)."""

    def __init__(self, error: Exception, stages: list[StageRun]):
        super().__init__(str(error))
        self.error = error
        self.stages = stages


def stage_trace(stages: Sequence[StageRun]) -> str:
    """The ``x-thrifty-cascade`` header (see the module docstring)."""
    parts = []
    for s in stages:
        models = []
        for c in s.calls:
            if c.answer is None:
                models.append(f"{c.model}!")
            elif c.answered_by != c.model:
                models.append(f"{c.model}>{c.answered_by}")
            else:
                models.append(c.model)
        parts.append(f"{s.stage + 1}:{','.join(models)}={s.outcome}")
    return ";".join(parts)


def worst_case_calls(cascade: Cascade, p: Mapping[str, float] | None, fallbacks: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Per call the request may make (every stage of its plan), the models that call may reach: what a budget books."""
    return [[m, *fallbacks.get(m, ())] for k in cascade.plan(p) for m in cascade.stages[k].models]


def check_request(body: Body, profile: str) -> None:
    """A cascade compares answers in text: requests it cannot serve get a 400 naming the field."""
    if body.get("tools"):
        raise InvalidRequest(f"profile {profile!r} is a cascade, which compares text answers: it does not take 'tools' "
                             "(request a model or a single-call profile)", param="tools")


async def run_cascade(
    dispatcher: Dispatcher,
    client_format: str,
    body: Body,
    cascade: Cascade,
    p: Mapping[str, float] | None,
    fallbacks: Mapping[str, Sequence[str]],
    attempts: list[AttemptRecord],
    *,
    deadline: Deadline,
    trace: RequestTrace | NoTrace = NO_TRACE,
) -> CascadeRun:
    """Run the stages of ``cascade.plan(p)`` until one is accepted; every attempt is appended to ``attempts``.

    Raises :class:`CascadeFailed` when no answer can be returned, or the client's error (a 4xx) at once.
    """
    answers: dict[str, str | None] = {}
    tokens: dict[str, float] = {}
    stages: list[StageRun] = []
    calls: list[Call] = []
    last_error: Exception | None = None
    for k in cascade.plan(p):
        run = await run_stage(dispatcher, client_format, body, cascade, k, p, fallbacks, answers, tokens, deadline=deadline,
                              trace=trace)
        stages.append(run)
        for c in run.calls:
            attempts.extend(c.attempts)
            calls.append(c)
            last_error = c.error or last_error
        if run.client_error is not None:
            raise run.client_error
        stage_calls, verdict = run.calls, run.verdict
        accepted = next((c.answer for c in stage_calls if c.model == verdict.model and c.answer is not None), None)
        if verdict.accept and accepted is None and verdict.final:
            # the last stage's chosen call failed: any answer it did get, else the failure
            accepted = next((c.answer for c in reversed(stage_calls) if c.answer is not None), None)
        if verdict.accept and accepted is not None:
            return CascadeRun(accepted, stages, calls)
    raise CascadeFailed(last_error or RuntimeError("the cascade's last stage gave no answer"), stages)


async def run_stage(
    dispatcher: Dispatcher,
    client_format: str,
    body: Body,
    cascade: Cascade,
    k: int,
    p: Mapping[str, float] | None,
    fallbacks: Mapping[str, Sequence[str]],
    answers: dict[str, str | None],
    tokens: dict[str, float],
    *,
    deadline: Deadline,
    trace: RequestTrace | NoTrace = NO_TRACE,
) -> StageRun:
    """Stage ``k``: its models called in parallel, their answers added to ``answers``/``tokens``, and the cascade's verdict.

    One span per stage (``thrifty.cascade.stage``), parent of the stage's attempts.
    """
    stage = cascade.stages[k]
    with trace.stage(k + 1, ",".join(stage.models), test=stage.accept.name) as span:
        run = await _stage_calls(dispatcher, client_format, body, cascade, k, p, fallbacks, answers, tokens, deadline, trace)
        span.set(accepted=bool(run.verdict.accept), outcome=run.outcome)
    return run


async def _stage_calls(dispatcher, client_format, body, cascade, k, p, fallbacks, answers, tokens, deadline, trace) -> StageRun:
    stage = cascade.stages[k]
    stage_calls = [Call(m) for m in stage.models]
    results = await asyncio.gather(
        *(dispatcher.complete(client_format, body, [c.model, *fallbacks.get(c.model, ())], c.attempts, deadline=deadline,
                              trace=trace)
          for c in stage_calls),
        return_exceptions=True,
    )
    client_error = None
    for c, result in zip(stage_calls, results):
        if isinstance(result, Answer):
            c.answer = result
            answers[c.model] = extract_answer(result.text)
            tokens[c.model] = float(result.usage.output_tokens)
            continue
        if isinstance(result, (UpstreamBadRequest, InvalidRequest)):
            client_error = client_error or result
        elif not isinstance(result, (UpstreamError, ServingError)):
            raise result  # a fault inside thrifty
        c.error, answers[c.model] = result, None
    verdict = cascade.decide(k, answers, p, tokens)
    return StageRun(k, stage_calls, verdict, stage.accept.name, {c.model: answers[c.model] for c in stage_calls}, client_error)


def answer_events(client_format: str, answer: Answer, *, include_usage: bool = False) -> list[bytes]:
    """A complete answer (in the client's format) as the SSE events a stream of it would have sent, ``[DONE]`` included."""
    from serving import sse

    body = answer.body
    if client_format == "anthropic":
        usage = dict(body.get("usage") or {})
        start = {**body, "content": [], "stop_reason": None, "stop_sequence": None,
                 "usage": {**usage, "output_tokens": 1 if usage.get("output_tokens") else 0}}
        events = [{"type": "message_start", "message": start}]
        for i, block in enumerate(b for b in body.get("content") or [] if b.get("type") == "text"):
            events += [
                {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}},
                {"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": block.get("text", "")}},
                {"type": "content_block_stop", "index": i},
            ]
        events += [
            {"type": "message_delta", "delta": {"stop_reason": body.get("stop_reason"), "stop_sequence": body.get("stop_sequence")},
             "usage": {"output_tokens": usage.get("output_tokens", 0)}},
            {"type": "message_stop"},
        ]
        return [sse.encode("anthropic", e) for e in events]
    base = {"id": body.get("id"), "object": "chat.completion.chunk", "created": body.get("created") or int(time.time()),
            "model": body.get("model")}
    if body.get("system_fingerprint"):
        base["system_fingerprint"] = body["system_fingerprint"]
    out = []
    for choice in body.get("choices") or []:
        message = choice.get("message") or {}
        delta = {"role": "assistant", "content": message.get("content") or ""}
        out.append({**base, "choices": [{"index": choice.get("index", 0), "delta": delta, "finish_reason": None}]})
        out.append({**base, "choices": [{"index": choice.get("index", 0), "delta": {}, "finish_reason": choice.get("finish_reason")}]})
    if include_usage and body.get("usage") is not None:
        out.append({**base, "choices": [], "usage": body["usage"]})
    return [sse.encode("openai", c) for c in out] + [sse.OPENAI_DONE]
