"""Prometheus metrics of the gateway. Names and labels (also in the README):

grpc_server_handled_total{grpc_service, grpc_method, grpc_code}     RPCs completed
grpc_server_handling_seconds{grpc_service, grpc_method}            RPC latency (histogram)
vaegan_inflight_requests                                          RPCs being handled
vaegan_stream_messages_total{grpc_method, grpc_code}              GenerateStream messages answered
vaegan_batch_size{model}                                          items per backend call (histogram)
vaegan_queue_wait_seconds{model}                                  time an item waited for its batch
vaegan_queue_depth{model}                                         items waiting
vaegan_queue_capacity{model}                                      items the queue holds at most (--max-queue)
vaegan_backend_requests_total{model, code}                        backend calls by outcome
vaegan_backend_latency_seconds{model}                             backend call latency (histogram)
vaegan_backend_ready                                              1 when the backend's models are ready
vaegan_draining                                                   1 from SIGTERM until the process exits
vaegan_build_info{version, backend}                               always 1
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class ModelSeries:
    """One model's label children, looked up once: every call and batch touches them, and
    ``labels()`` validates and hashes its arguments each time."""

    batch_size: Histogram
    queue_wait: Histogram
    queue_depth: Gauge
    backend_latency: Histogram
    backend_requests: dict[str, Counter]  # by status code name


class Metrics:
    """All gateway metrics in their own registry (several gateways can share a process).
    Under ``vaegan serve --workers N`` each worker writes its values to files in
    $PROMETHEUS_MULTIPROC_DIR and the supervisor's one endpoint adds them up: counters and
    histograms sum over workers (the exited ones too), gauges over live workers as each
    one's ``multiprocess_mode`` says (readiness is the least ready worker's)."""

    def __init__(self, backend: str, version: str):
        r = self.registry = CollectorRegistry()
        self.models: dict[str, ModelSeries] = {}
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "RPC latency on the server.",
            ["grpc_service", "grpc_method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "vaegan_inflight_requests",
            "RPCs being handled now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        # A stream's messages each end with their own code, while grpc_server_handled_total
        # counts the stream once, when it ends.
        self.stream_messages = Counter(
            "vaegan_stream_messages_total",
            "Messages of request streams answered, by the status code of their answer.",
            ["grpc_method", "grpc_code"],
            registry=r,
        )
        self.batch_size = Histogram(
            "vaegan_batch_size",
            "Items per backend call.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "vaegan_queue_wait_seconds",
            "Time an item waited in the batching queue.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "vaegan_queue_depth",
            "Items waiting in the batching queue.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_capacity = Gauge(
            "vaegan_queue_capacity",
            "Items the batching queue holds at most (--max-queue).",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.backend_requests = Counter(
            "vaegan_backend_requests_total",
            "Backend calls, by outcome.",
            ["model", "code"],
            registry=r,
        )
        self.backend_latency = Histogram(
            "vaegan_backend_latency_seconds",
            "Backend call latency.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_ready = Gauge(
            "vaegan_backend_ready",
            "1 when the backend's models are ready.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.draining = Gauge(
            "vaegan_draining",
            "1 from shutdown (SIGTERM) until the process exits.",
            registry=r,
            multiprocess_mode="livemax",
        )
        info = Gauge(
            "vaegan_build_info",
            "Gateway build information.",
            ["version", "backend"],
            registry=r,
            multiprocess_mode="livemax",
        )
        info.labels(version=version, backend=backend).set(1)

    def start_streams(self, methods) -> None:
        """The per-message series of the streaming-request ``methods`` at zero (as below)."""
        import grpc

        for method in methods:
            for code in grpc.StatusCode:
                self.stream_messages.labels(method, code.name)

    def start_models(self, models) -> None:
        """Every per-model series at zero before the first call: Prometheus takes a
        counter's (or histogram's) first scraped value as its baseline, so calls made before
        a series first appears would count in no rate()."""
        for model in models:
            self.model(model).queue_depth.set(0)

    def model(self, name: str) -> ModelSeries:
        """``name``'s series (created at zero on first use)."""
        series = self.models.get(name)
        if series is None:
            import grpc

            series = self.models[name] = ModelSeries(
                batch_size=self.batch_size.labels(name),
                queue_wait=self.queue_wait.labels(name),
                queue_depth=self.queue_depth.labels(name),
                backend_latency=self.backend_latency.labels(name),
                backend_requests={
                    c.name: self.backend_requests.labels(name, c.name) for c in grpc.StatusCode
                },
            )
        return series


def metric_value(text: str, name: str, **labels) -> float:
    """Read back from exposition text (tests, benchmarks): the sum of sample ``name`` over
    the series whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total
