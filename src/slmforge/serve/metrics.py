"""Prometheus metrics of one server: requests, errors, tokens, latency, queue depth.

Each app has its own registry, so several servers (or tests) in one process never share counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("endpoint", "model")
        self.requests = Counter(
            "slmforge_requests",
            "Requests answered, by status.",
            ("endpoint", "status"),
            registry=self.registry,
        )
        self.errors = Counter(
            "slmforge_request_errors",
            "Requests that ended in an error.",
            ("endpoint", "status"),
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "slmforge_prompt_tokens", "Prompt tokens read.", labels, registry=self.registry
        )
        self.completion_tokens = Counter(
            "slmforge_completion_tokens", "Tokens generated.", labels, registry=self.registry
        )
        self.ttft = Histogram(
            "slmforge_time_to_first_token_seconds",
            "Time to the first generated text.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "slmforge_request_latency_seconds",
            "Time from admission to the last token.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "slmforge_queue_depth",
            "Requests waiting for a generation slot.",
            registry=self.registry,
        )
        self.content_filtered = Counter(
            "slmforge_content_filter_blocks",
            "Prompts (input) and answers (output) the content filter blocked, by category.",
            ("direction", "category"),
            registry=self.registry,
        )
        self.running = Gauge(
            "slmforge_running_requests", "Generations running now.", registry=self.registry
        )

    def watch_prefix_cache(self, stats_of: Callable[[], Any]) -> None:
        """Report the prefix cache's counters (`runtime.prefix_cache.PrefixStats`, or None
        while no model with one is loaded) at every scrape."""
        self.registry.register(_PrefixCacheCollector(stats_of))

    def count(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()

    def count_filtered(self, direction: str, results: dict[str, object]) -> None:
        for category, result in results.items():
            if isinstance(result, dict) and result.get("filtered"):
                self.content_filtered.labels(direction, category).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PrefixCacheCollector:
    """Counters read from the engine's prefix cache when /metrics is scraped."""

    COUNTERS = (
        ("hits", "slmforge_prefix_cache_hits", "Prompt blocks read from the prefix cache."),
        ("misses", "slmforge_prefix_cache_misses", "Full prompt blocks computed (not cached)."),
        ("reused_tokens", "slmforge_prefix_cache_reused_tokens", "Prompt tokens not prefilled."),
        ("evicted", "slmforge_prefix_cache_evictions", "Blocks dropped to stay in budget."),
    )
    GAUGES = (
        ("bytes", "slmforge_prefix_cache_bytes", "Memory the cached keys and values take."),
        ("blocks", "slmforge_prefix_cache_blocks", "Blocks in the prefix cache."),
    )

    def __init__(self, stats_of: Callable[[], Any]) -> None:
        self.stats_of = stats_of

    def describe(self) -> list[Any]:
        return []  # names are known only once a model is loaded; nothing to check up front

    def collect(self) -> Iterator[Any]:
        stats = self.stats_of()
        if stats is None:
            return
        for field, name, documentation in self.COUNTERS:
            yield CounterMetricFamily(name, documentation, value=getattr(stats, field))
        for field, name, documentation in self.GAUGES:
            yield GaugeMetricFamily(name, documentation, value=getattr(stats, field))
