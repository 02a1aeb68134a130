"""Prometheus metrics of one app, in a registry of its own (never the process-global one).

With ``thrifty serve --workers N`` every scrape shows the whole server, whichever
worker answers it: ``thrifty serve`` gives the workers a temporary directory
(``PROMETHEUS_MULTIPROC_DIR``, removed when the server exits), each worker
writes its values there (prometheus_client's multiprocess mode, chosen when
its first metric is built), and ``/metrics`` adds up every worker's files.
Counters and histograms sum over all workers, the ones that exited included;
``thrifty_requests_in_flight`` sums the live workers; ``thrifty_circuit_open``
is the largest over live workers (1 while any worker's breaker keeps the
model out: breakers are per process).
"""

from __future__ import annotations

import atexit
import glob
import os
import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get(MULTIPROCESS_ENV) or None
        if self.multiprocess_dir:
            _forget_dead_workers(self.multiprocess_dir)
            atexit.register(_forget_worker, os.getpid(), self.multiprocess_dir)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "thrifty_requests", "HTTP requests answered, by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.request_latency = Histogram(
            "thrifty_request_latency_seconds", "Time to answer a request (to the last byte of a stream)",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.decisions = Counter(
            "thrifty_decisions", "Routing decisions, by requested profile (or passthrough) and chosen model",
            ["profile", "model"], registry=r,
        )
        self.spend = Counter("thrifty_spend_usd", "Upstream spend in USD, by answering model", ["model"], registry=r)
        self.tokens = Counter(
            "thrifty_tokens", "Upstream tokens, by model and direction (input/output)", ["model", "direction"], registry=r
        )
        self.upstream_latency = Histogram(
            "thrifty_upstream_latency_seconds", "Upstream call time, by model", ["model"], buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "thrifty_upstream_errors", "Failed upstream calls, by model and error kind", ["model", "kind"], registry=r
        )
        self.routing_latency = Histogram(
            "thrifty_routing_latency_seconds", "Time to make a routing decision",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25), registry=r,
        )
        self.decision_novelty = Histogram(
            "thrifty_decision_novelty", "How unlike the router's training prompts each routed prompt is (1 = typical; see router.novelty)",
            buckets=(0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0), registry=r,
        )
        self.decision_batch = Histogram(
            "thrifty_decision_batch_size", "Requests decided together in one batch (those that arrived in the same turn of the event loop)",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )
        self.in_flight = Gauge("thrifty_requests_in_flight", "Requests being answered", registry=r,
                               multiprocess_mode="livesum")
        self.failovers = Counter(
            "thrifty_failovers", "Upstream failures a request moved on from (to another model, or the same after Retry-After)",
            ["model", "kind"], registry=r,
        )
        self.breaker_open = Gauge(
            "thrifty_circuit_open", "1 while a model's circuit breaker keeps it out (open or half-open)", ["model"], registry=r,
            multiprocess_mode="livemax",
        )
        self.breaker_transitions = Counter(
            "thrifty_circuit_transitions", "Circuit breaker state changes, by model and new state", ["model", "state"], registry=r
        )
        self.stream_errors = Counter(
            "thrifty_stream_errors", "Streams ended with an error event after bytes reached the client", ["model", "kind"],
            registry=r,
        )
        self.budget_rejections = Counter(
            "thrifty_budget_rejections", "Requests refused because the client's budget could not cover them", ["client"],
            registry=r,
        )

        self._children: dict = {}

    def child(self, metric, *labels: str):
        """``metric.labels(*labels)``, looked up once per label set (label values are bounded: models, endpoints, ...)."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        if self.multiprocess_dir:
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
            return generate_latest(registry)
        return generate_latest(self.registry)


def _forget_worker(pid: int, directory: str) -> None:
    """A worker is gone: its live gauges stop counting (its counters and histograms stay in the totals)."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, directory)


def _forget_dead_workers(directory: str) -> None:
    """Live gauges of workers that died without cleaning up (killed, then replaced by the server)."""
    pids = {int(m.group(1)) for f in glob.glob(os.path.join(directory, "gauge_live*_*.db"))
            if (m := re.search(r"_(\d+)\.db$", f))}
    for pid in pids - {os.getpid()}:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _forget_worker(pid, directory)
        except PermissionError:  # alive, someone else's
            pass
