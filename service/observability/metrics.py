"""Prometheus metrics of the service, summed correctly across gunicorn worker processes.

Counters and histograms live in prometheus_client's default registry. Under gunicorn,
``PROMETHEUS_MULTIPROC_DIR`` (set by ``gunicorn.conf.py`` before anything imports
prometheus_client) makes every worker write them to files of its own, and ``/metrics`` sums
the files of all workers, dead ones included, so counts never drop when a worker restarts.
Budget spent per dataset is not counted here at all: it is read from the ledger at scrape
time, so it is right whichever worker or instance charged.

``/metrics`` is served only when ``DPX_METRICS_TOKEN`` is set, and only to a request that
presents it as a bearer token (otherwise 404 and 401). Its labels never identify a partner:
no partner ids, no tokens, no raw paths (``endpoint`` is the URL rule,
``/v1/releases/<string:release_id>``). Dataset ids appear only with
``DPX_METRICS_DATASET_LABELS=1``: with a single grantee, a dataset's spend is that
partner's spend. Without it, releases are counted under ``dataset="all"`` and the
per-dataset budget gauges are not exported.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Iterator

from flask import Flask, Response, abort, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from service.auth.registry import Unauthenticated
from service.config import Settings
from service.dp.errors import InvalidQuery
from service.exchange import Exchange, Forbidden, NotFound
from service.ledger.budgets import GLOBAL, BudgetExhausted
from service.policy.errors import PolicyViolation

REQUESTS = Counter(
    "dpx_http_requests",
    "HTTP requests answered, by URL rule, method and status",
    ["endpoint", "method", "status"],
)
LATENCY = Histogram(
    "dpx_http_request_duration_seconds",
    "Time to answer an HTTP request, by URL rule and method",
    ["endpoint", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RELEASES = Counter(
    "dpx_releases",
    "Queries answered with a new, charged release (status 201), by dataset",
    ["dataset"],
)
CACHED = Counter(
    "dpx_cached_answers",
    "Queries answered from a stored release at no cost (status 200), by dataset",
    ["dataset"],
)
REFUSALS = Counter(
    "dpx_query_refusals",
    "Queries refused before any release: budget_exhausted, a policy rule "
    "(no_grant, expired, statistic, dimension, max_per_query), invalid, "
    "not_found or forbidden",
    ["reason"],
)

ALL_DATASETS = "all"
"""The dataset label of every release count unless dataset labels are configured."""

UNMATCHED = "unmatched"
"""The endpoint label of requests that matched no URL rule (their paths are not recorded)."""


def count_answer(dataset: str, *, cached: bool) -> None:
    """Count one answered query: a new release, or a stored one returned free."""
    settings: Settings = current_app.config["DPX_SETTINGS"]
    label = dataset if settings.metrics_dataset_labels else ALL_DATASETS
    (CACHED if cached else RELEASES).labels(dataset=label).inc()


def refusal_reason(error: BaseException) -> str | None:
    """The refusal label of an error raised by ``Exchange.run``; None if it is no refusal."""
    if isinstance(error, BudgetExhausted):
        return "budget_exhausted"
    if isinstance(error, PolicyViolation):
        return error.rule
    if isinstance(error, InvalidQuery):
        return "invalid"
    if isinstance(error, NotFound):
        return "not_found"
    if isinstance(error, Forbidden):
        return "forbidden"
    return None


def count_refusal(error: BaseException) -> None:
    """Count a refused query by reason; conflicts and internal errors are not refusals."""
    reason = refusal_reason(error)
    if reason is not None:
        REFUSALS.labels(reason=reason).inc()


class BudgetCollector:
    """Each dataset's global spend and global budget, read from the ledger when scraped.

    Only the global account (all partners together) is exposed: per-partner spend would
    tell anyone who can reach ``/metrics`` which partner asks how much of which helpline.
    """

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    def collect(self) -> Iterator[Metric]:
        spent = GaugeMetricFamily(
            "dpx_budget_spent",
            "Privacy loss spent on a dataset by all partners together, from the ledger",
            labels=["dataset", "unit"],
        )
        budget = GaugeMetricFamily(
            "dpx_budget_global",
            "Global privacy budget of a dataset, from its policy",
            labels=["dataset", "unit"],
        )
        accounts = self.exchange.all_spent()
        for dataset in sorted(self.exchange.policies.datasets.values(), key=lambda d: d.id):
            labels = [dataset.id, dataset.budget_unit]
            spent.add_metric(labels, float(accounts.get((dataset.id, GLOBAL), 0)))
            budget.add_metric(labels, float(dataset.global_budget))
        yield spent
        yield budget


def exposition(exchange: Exchange, *, dataset_labels: bool) -> bytes:
    """The Prometheus text exposition of every dpx metric, summed over worker processes;
    the per-dataset budget gauges only with ``dataset_labels``."""
    ledger = CollectorRegistry()
    if dataset_labels:
        ledger.register(BudgetCollector(exchange))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        workers = CollectorRegistry()
        MultiProcessCollector(workers)  # type: ignore[no-untyped-call]
        return generate_latest(workers) + generate_latest(ledger)
    return generate_latest(REGISTRY) + generate_latest(ledger)


METRICS_ENDPOINT = "metrics"


def offers_metrics_token(settings: Settings) -> bool:
    """True when this request's bearer token is the scraper's ``DPX_METRICS_TOKEN``."""
    scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
    return (
        settings.metrics_token is not None
        and scheme.lower() == "bearer"
        and hmac.compare_digest(offered.strip().encode(), settings.metrics_token.encode())
    )


def instrument(app: Flask) -> None:
    """Count and time every request by URL rule and status, and serve ``GET /metrics``.

    ``/metrics`` is a plain Flask rule, outside the OpenAPI document of the partner API.
    """

    @app.before_request
    def start_clock() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def count_request(response: Response) -> Response:
        started = g.get("metrics_started")
        endpoint = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        REQUESTS.labels(
            endpoint=endpoint, method=request.method, status=str(response.status_code)
        ).inc()
        if started is not None:
            LATENCY.labels(endpoint=endpoint, method=request.method).observe(
                time.perf_counter() - started
            )
        return response

    def metrics() -> Response:
        settings: Settings = current_app.config["DPX_SETTINGS"]
        if settings.metrics_token is None:
            abort(404)
        if not offers_metrics_token(settings):
            raise Unauthenticated()
        body = exposition(
            current_app.extensions["dpx.exchange"], dataset_labels=settings.metrics_dataset_labels
        )
        return Response(body, mimetype=None, content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", METRICS_ENDPOINT, metrics, methods=["GET"])
