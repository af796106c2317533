"""Prometheus metrics of the server, rendered in the text exposition format for GET /metrics.

A few small, thread-safe metric types (counter, gauge, histogram, each with labels) — all the
server needs, without another dependency.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def total(self) -> float:
        return sum(self._values.values())

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    """A value read when scraped (`fn`) or set explicitly."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (), fn: Callable[[], float] | None = None) -> None:
        super().__init__(name, help, labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._fn = fn

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values = {**self._values, self._key(labels): float(value)}

    def replace(self, value: float, **labels: str) -> None:
        """Set this label set and drop every other one (e.g. the current model's info)."""
        with self._lock:
            self._values = {self._key(labels): float(value)}

    def render(self) -> list[str]:
        if self._fn is not None:
            return [*self.header(), f"{self.name} {_num(self._fn())}"]
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets))
        self._data: dict[tuple[str, ...], tuple[list[int], float, int]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total, n = self._data.get(key, ([0] * len(self.buckets), 0.0, 0))
            counts = list(counts)
            index = bisect.bisect_left(self.buckets, value)
            if index < len(counts):
                counts[index] += 1
            self._data[key] = (counts, total + value, n + 1)

    def count(self, **labels: str) -> int:
        return self._data.get(self._key(labels), ([], 0.0, 0))[2]

    def sum(self, **labels: str) -> float:
        """The total of the values observed (with these labels)."""
        return self._data.get(self._key(labels), ([], 0.0, 0))[1]

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            items = sorted(self._data.items())
        for key, (counts, total, n) in items:
            running = 0
            for bound, c in zip(self.buckets, counts):
                running += c
                le = 'le="' + _num(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            le_inf = 'le="+Inf"'
            lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le_inf)} {n}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {n}")
        return lines


class ServerMetrics:
    """Every metric the server exports."""

    def __init__(self, queue_depth: Callable[[], float], threads: Callable[[], float],
                 model_restarts: Callable[[], float] = lambda: 0) -> None:
        self.requests = Counter("defect_glm_requests_total", "HTTP requests answered", ("route", "method", "status"))
        self.latency = Histogram(
            "defect_glm_request_latency_seconds", "HTTP request latency", LATENCY_BUCKETS, ("route",)
        )
        self.queue_depth = Gauge("defect_glm_queue_depth", "requests waiting for the model", fn=queue_depth)
        self.batch_size = Histogram("defect_glm_batch_size", "requests per generate call", BATCH_BUCKETS)
        self.generate_seconds = Histogram(
            "defect_glm_generate_seconds", "time of one batched generate call", LATENCY_BUCKETS
        )
        self.model_errors = Counter("defect_glm_model_errors_total", "generate calls that failed")
        self.rejected = Counter("defect_glm_rejected_total", "requests refused before the model", ("reason",))
        self.reloads = Counter("defect_glm_reloads_total", "model reloads", ("result",))
        self.threads = Gauge("defect_glm_threads", "threads held in memory", fn=threads)
        self.model_info = Gauge("defect_glm_model_info", "the loaded model", ("model", "version", "backend"))
        self.model_restarts = Gauge(
            "defect_glm_model_process_restarts",
            "model processes started anew after one died or hung, since the model was loaded", fn=model_restarts,
        )

    def render(self) -> str:
        metrics = (self.requests, self.latency, self.queue_depth, self.batch_size, self.generate_seconds,
                   self.model_errors, self.rejected, self.reloads, self.threads, self.model_info,
                   self.model_restarts)
        lines: list[str] = []
        for metric in metrics:
            lines += metric.render()
        return "\n".join(lines) + "\n"
