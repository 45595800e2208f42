"""The dashboard's and the autoscaler's queries, run by a real Prometheus scraping a live
gateway and the real local Triton after a known mix of traffic: each must return series,
and the values must agree with what the test sent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from gateway_harness import GatewayThread, wait_until

from vaegan.host import free_port

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "k8s" / "vaegan"
NAMESPACE = "vaegan-test"
WINDOW = "5m"  # covers the whole test's traffic, so a rate times the window is a count
# Panels on Triton's GPU metrics: this machine has no GPU, so they have no series here.
NEEDS_GPU = ("nv_gpu_", "nv_energy_")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="prometheus is not installed (apt-get install prometheus; .ci/run does)",
    ),
]


class Prometheus:
    """A real Prometheus on loopback, scraping ``targets`` (job -> (host:port, pod)) every
    second, with the labels Kubernetes service discovery would give (namespace, pod)."""

    def __init__(self, targets: dict[str, tuple[str, str]], workdir: Path):
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [
                        {"targets": [hostport], "labels": {"namespace": NAMESPACE, "pod": pod}}
                    ],
                }
                for job, (hostport, pod) in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.jobs = list(targets)

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        body = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def scrapes(self) -> int:
        """Successful scrapes of every target so far (the fewest of any job)."""
        try:
            got = self.query("count_over_time(up[10m])")
        except OSError:
            return 0
        counts = {r["metric"]["job"]: int(float(r["value"][1])) for r in got}
        return min((counts.get(j, 0) for j in self.jobs), default=0)

    def wait_scrapes(self, more: int = 2) -> None:
        """Until every target has been scraped ``more`` more times."""
        start = self.scrapes()
        wait_until(lambda: self.scrapes() >= start + more, timeout=60, every=0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def grafana(expr: str) -> str:
    """A dashboard expression as Grafana sends it: template variables substituted."""
    return expr.replace("$namespace", NAMESPACE).replace("$__rate_interval", WINDOW)


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads((CHART / "dashboards" / "vaegan.json").read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def adapter_queries() -> list[tuple[str, str]]:
    """The prometheus-adapter rules the chart documents for its HPA's custom metric, with
    the adapter's template filled in as it would for this namespace's pods."""
    rules = yaml.safe_load((CHART / "prometheus-adapter-rules.yaml").read_text())
    out = []
    for rule in rules["rules"]["custom"]:
        q = rule["metricsQuery"]
        q = q.replace("<<.Series>>", rule["seriesQuery"].split("{")[0])
        q = q.replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~".+"')
        q = q.replace("<<.GroupBy>>", "pod")
        out.append((rule["name"]["as"], q))
    return out


def empty_queries(prom: Prometheus, queries: list[tuple[str, str]]) -> list[str]:
    return [title for title, expr in queries if not prom.query(grafana(expr))]


@pytest.fixture(scope="module")
def observed(tiny_checkpoint, tmp_path_factory):
    """Prometheus, after a known mix of traffic through the gateway and Triton: per method,
    how many calls ended OK and how many with each error, and the client's latencies."""
    from conftest import encode, pattern

    from vaegan.client import LatentClient
    from vaegan.export.export import export
    from vaegan.export.local_triton import LocalTriton
    from vaegan.export.options import ExportOptions
    from vaegan.service.settings import Settings

    tmp = tmp_path_factory.mktemp("observability")
    export(
        tiny_checkpoint,
        tmp / "repo",
        ExportOptions(backend="python", execution_env=sys.prefix + "-triton"),
        log=lambda *_: None,
    )
    with (
        LocalTriton(tmp / "repo") as triton,
        GatewayThread(Settings(triton_url=triton.grpc_url, max_items=8)) as gw,
    ):
        prom = Prometheus(
            {
                "gateway": (gw.metrics_url.split("/")[2], "gateway-0"),
                "triton": (triton.metrics_url.split("/")[2], "triton-0"),
            },
            tmp,
        )
        try:
            sent: dict[tuple[str, str], int] = {}
            latencies: list[float] = []
            image = encode(pattern(40, 40), "PNG")
            with LatentClient(gw.target, throttle=False) as c:

                def call(method: str, fn) -> None:
                    t = time.perf_counter()
                    try:
                        fn()
                        code = "OK"
                        if method == "Generate":
                            latencies.append(time.perf_counter() - t)
                    except grpc.RpcError as e:
                        code = e.code().name
                    sent[method, code] = sent.get((method, code), 0) + 1

                def mix() -> None:
                    for i in range(30):
                        call("Generate", lambda i=i: c.generate(count=2, seed=i))
                    for _ in range(10):  # more items than --max-items 8
                        call("Generate", lambda: c.generate(count=9))
                    for _ in range(12):
                        call("Encode", lambda: c.encode([image]))
                    for _ in range(4):
                        call("Encode", lambda: c.encode([b"not an image"]))
                    for _ in range(3):
                        call(
                            "InterpolateStream",
                            lambda: list(
                                c.interpolate_stream([np.zeros(16), np.ones(16)], steps=6)
                            ),
                        )

                # Prometheus has seen every series at zero before the traffic (the gateway
                # starts them so), so the rates count all of it.
                prom.wait_scrapes()
                mix()
                prom.wait_scrapes()
            yield prom, sent, latencies
        finally:
            prom.stop()


def _value(result: list[dict], **labels) -> float:
    """The value of the one series of ``result`` whose labels include ``labels``."""
    found = [r for r in result if all(r["metric"].get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (labels, result)
    return float(found[0]["value"][1])


def test_every_dashboard_and_autoscaler_query_returns_series_from_real_traffic(observed):
    prom, _, _ = observed
    queries = [
        (title, expr)
        for title, expr in dashboard_queries() + adapter_queries()
        if not any(m in expr for m in NEEDS_GPU)
    ]
    assert len(queries) > 15 and any("nv_inference" in e for _, e in queries)
    assert not empty_queries(prom, queries)
    for title, expr in queries:  # shown with -s: what each query returned
        got = prom.query(grafana(expr))
        shown = ", ".join(
            f"{'/'.join(v for k, v in sorted(r['metric'].items()) if k not in ('namespace', 'pod', 'grpc_service'))}"
            f"={float(r['value'][1]):.4g}"
            for r in got
        )
        print(f"{title}: {shown}")


def test_a_query_with_a_wrong_label_is_caught(observed):
    prom, _, _ = observed
    title, expr = next((t, e) for t, e in dashboard_queries() if "grpc_server_handled" in e)
    broken = expr.replace(
        'grpc_service="vaegan.v1.LatentService"', 'grpc_service="vaegan.LatentService"'
    )
    assert broken != expr
    assert empty_queries(prom, [(title, broken)]) == [title]


def _window_seconds() -> float:
    return float(WINDOW.rstrip("m")) * 60


def test_request_rates_and_error_ratios_agree_with_the_traffic_sent(observed):
    prom, sent, _ = observed
    queries = dict(dashboard_queries())
    rates = prom.query(grafana(queries["Request rate by method and code"]))
    for (method, code), n in sent.items():
        got = _value(rates, grpc_method=method, grpc_code=code) * _window_seconds()
        assert got == pytest.approx(n, rel=0.25, abs=1.5), (method, code, got, n)
    ratios = prom.query(grafana(queries["Error ratio by method"]))
    for method in ("Generate", "Encode"):
        total = sum(n for (m, _), n in sent.items() if m == method)
        errors = sum(n for (m, c), n in sent.items() if m == method and c != "OK")
        assert _value(ratios, grpc_method=method) == pytest.approx(errors / total, abs=0.05)


def test_latency_quantiles_fall_inside_what_the_client_measured(observed):
    prom, _, latencies = observed
    queries = [e for t, e in dashboard_queries() if "grpc_server_handling_seconds_bucket" in e]
    assert len(queries) == 3  # p50, p95, p99
    lo, hi = min(latencies), max(latencies)
    for expr in queries:
        q = _value(prom.query(grafana(expr)), grpc_method="Generate")
        # A quantile is interpolated inside its bucket (bounds 1, 2.5, 5 x powers of ten) and
        # the server's time is a part of the client's: at most the bucket above the slowest.
        assert 0 < q <= 2.5 * hi and q >= lo / 10, (expr, q, lo, hi)
