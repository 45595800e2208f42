"""The dashboard's and the autoscaler's queries, run by a real Prometheus scraping a live
gateway and the real local Triton after a known mix of traffic: each must return series,
and the values must agree with what the test sent."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
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

    def __init__(self, targets: dict[str, tuple[str, str]], workdir: Path, rules: dict):
        self.port = free_port()
        (workdir / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / "rules.yaml")],
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

    def rules(self) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/rules"
        body = json.loads(urllib.request.urlopen(url, timeout=10).read())
        return [r for g in body["data"]["groups"] for r in g["rules"]]

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
def observed(repo, tmp_path_factory):
    """Prometheus, after a known mix of traffic through the gateway and Triton: per method,
    how many calls ended OK and how many with each error, and the client's latencies."""
    from conftest import encode, pattern

    from vaegan.client import LatentClient
    from vaegan.export.local_triton import LocalTriton
    from vaegan.service.settings import Settings

    tmp = tmp_path_factory.mktemp("observability")
    with (
        LocalTriton(repo) as triton,
        # One call in flight at a time: calls sent together are refused (RESOURCE_EXHAUSTED).
        GatewayThread(Settings(triton_url=triton.grpc_url, max_items=8, max_inflight=1)) as gw,
    ):
        # Job names as the chart's ServiceMonitors give them (the Services' names), so the
        # chart's rules, rendered for this namespace, select these targets.
        prom = Prometheus(
            {
                "vaegan-gateway": (gw.metrics_url.split("/")[2], "gateway-0"),
                "vaegan-triton": (triton.metrics_url.split("/")[2], "triton-0"),
            },
            tmp,
            rendered_rules(NAMESPACE),
        )
        try:
            sent: dict[tuple[str, str], int] = {}
            lock = threading.Lock()
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
                    with lock:
                        sent[method, code] = sent.get((method, code), 0) + 1

                def mix() -> None:
                    for i in range(30):
                        call("Generate", lambda i=i: c.generate(count=2, seed=i))
                    for _ in range(10):  # more items than --max-items 8
                        call("Generate", lambda: c.generate(count=9))
                    with ThreadPoolExecutor(8) as pool:  # more calls at once than admitted
                        for i in range(24):
                            pool.submit(call, "Generate", lambda i=i: c.generate(count=1, seed=i))
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
                prom.wait_scrapes(3)  # and the rules have been evaluated on the last
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
    # Each backend call the gateway counts is one request Triton counts.
    backend = prom.query(grafana(queries["Backend calls by outcome"]))
    (successes,) = [
        e
        for _, e in dashboard_queries()
        if e.startswith("sum by (model) (rate(nv_inference_request_success")
    ]
    triton = prom.query(grafana(successes))
    for model in ("vaegan_encoder", "vaegan_decoder"):
        ours = _value(backend, model=model, code="OK")
        assert ours > 0 and ours == pytest.approx(_value(triton, model=model), rel=0.25), model
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


# --- the chart's rules: promtool, then the live Prometheus ---------------------------------


def rendered_rules(namespace: str) -> dict:
    """The chart's PrometheusRule, rendered by Helm for release "vaegan" in ``namespace``,
    as a Prometheus rule file."""
    import helm_python as helm

    out = helm.Chart.load(str(CHART)).render(
        {"prometheusRule": {"enabled": True}}, name="vaegan", namespace=namespace, is_install=True
    )
    (doc,) = [d for d in yaml.safe_load_all(out["vaegan/templates/prometheusrule.yaml"]) if d]
    return {"groups": doc["spec"]["groups"]}


def _alert_rules(rules: dict) -> dict[str, dict]:
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


GW = 'namespace="ml",job="vaegan-gateway"'
GEN = f'{GW},grpc_service="vaegan.v1.LatentService",grpc_method="Generate"'


def _handled(code: str, values: str) -> dict:
    return {"series": f'grpc_server_handled_total{{{GEN},grpc_code="{code}"}}', "values": values}


def _latency(fast: str, total: str) -> list[dict]:
    return [
        {"series": f'grpc_server_handling_seconds_bucket{{{GEN},le="0.25"}}', "values": fast},
        {"series": f"grpc_server_handling_seconds_count{{{GEN}}}", "values": total},
    ]


# alert -> (series that make it fire, series that leave it silent, when to look, the labels
# it fires with). Day-long windows need day-long series: 1,600 one-minute samples.
ALERT_CASES = {
    "VaeganErrorBudgetBurn": (
        [_handled("OK", "0+100x100"), _handled("UNAVAILABLE", "0+5x100")],  # 4.8% errors
        [_handled("OK", "0+100x100"), _handled("INVALID_ARGUMENT", "0+20x100")],  # callers'
        "70m",
        {"namespace": "ml", "job": "vaegan-gateway", "severity": "page"},
    ),
    "VaeganErrorBudgetBurnSlow": (
        [_handled("OK", "0+200x1600"), _handled("INTERNAL", "0+1x1600")],  # 0.5%: not fast
        [_handled("OK", "0+2000x1600"), _handled("INTERNAL", "0+1x1600")],  # 0.05%
        "1d2h",
        {"namespace": "ml", "job": "vaegan-gateway", "severity": "ticket"},
    ),
    "VaeganLatencyBudgetBurn": (
        _latency("0+80x100", "0+100x100"),  # 20% slower than 0.25 s
        _latency("0+99.5x100", "0+100x100"),
        "70m",
        {"namespace": "ml", "job": "vaegan-gateway", "severity": "page"},
    ),
    "VaeganLatencyBudgetBurnSlow": (
        _latency("0+98x1600", "0+100x1600"),  # 2%: over budget, not fast
        _latency("0+99.5x1600", "0+100x1600"),
        "1d2h",
        {"namespace": "ml", "job": "vaegan-gateway", "severity": "ticket"},
    ),
    "VaeganTritonDown": (
        [{"series": 'up{namespace="ml",job="vaegan-triton"}', "values": "1x5 0x15"}],
        [{"series": 'up{namespace="ml",job="vaegan-triton"}', "values": "1x5 0x2 1x15"}],
        "15m",
        {"namespace": "ml", "job": "vaegan-triton", "severity": "page"},
    ),
    "VaeganGatewayNotServing": (
        [{"series": f'vaegan_backend_ready{{{GW},pod="gw-0"}}', "values": "1x3 0x15"}],
        [{"series": f'vaegan_backend_ready{{{GW},pod="gw-0"}}', "values": "1x3 0x2 1x15"}],
        "12m",
        {"namespace": "ml", "job": "vaegan-gateway", "pod": "gw-0", "severity": "warning"},
    ),
    "VaeganQueueNearCap": (
        [
            {"series": f'vaegan_queue_depth{{{GW},pod="gw-0",model="d"}}', "values": "230x20"},
            {"series": f'vaegan_queue_capacity{{{GW},pod="gw-0",model="d"}}', "values": "256x20"},
        ],
        [
            {"series": f'vaegan_queue_depth{{{GW},pod="gw-0",model="d"}}', "values": "100x20"},
            {"series": f'vaegan_queue_capacity{{{GW},pod="gw-0",model="d"}}', "values": "256x20"},
        ],
        "15m",
        {"namespace": "ml", "pod": "gw-0", "model": "d", "severity": "warning"},
    ),
    "VaeganShedding": (
        [_handled("OK", "0+100x30"), _handled("RESOURCE_EXHAUSTED", "0+10x30")],  # 9%
        # 0.05%: refusals well inside the availability budget too
        [_handled("OK", "0+2000x30"), _handled("RESOURCE_EXHAUSTED", "0+1x30")],
        "20m",
        {"namespace": "ml", "job": "vaegan-gateway", "severity": "warning"},
    ),
    "VaeganStuckDraining": (
        [{"series": f'vaegan_draining{{{GW},pod="gw-0"}}', "values": "0x2 1x15"}],
        [{"series": f'vaegan_draining{{{GW},pod="gw-0"}}', "values": "0x2 1x2 _x15"}],  # exited
        "12m",
        {"namespace": "ml", "job": "vaegan-gateway", "pod": "gw-0", "severity": "warning"},
    ),
    "VaeganMemoryNearLimit": (
        [
            {
                "series": 'container_memory_working_set_bytes{namespace="ml",pod="gw-0",container="gateway"}',
                "values": "950x20",
            },
            {
                "series": 'kube_pod_container_resource_limits{namespace="ml",pod="gw-0",container="gateway",resource="memory"}',
                "values": "1000x20",
            },
        ],
        [
            {
                "series": 'container_memory_working_set_bytes{namespace="ml",pod="gw-0",container="gateway"}',
                "values": "500x20",
            },
            {
                "series": 'kube_pod_container_resource_limits{namespace="ml",pod="gw-0",container="gateway",resource="memory"}',
                "values": "1000x20",
            },
        ],
        "15m",
        {"namespace": "ml", "pod": "gw-0", "container": "gateway", "severity": "warning"},
    ),
}


def promtool_tests(rules: dict) -> dict:
    """Two promtool tests per alert: it fires on its series; on the quiet series it and every
    other alert stay silent. A slow burn must not page: its series leave the fast alert
    silent too. (A fast burn also shows in the slow alerts' windows, so a fast burn's test
    says nothing of them.)"""
    alerts = _alert_rules(rules)
    tests = []
    for name, (firing, quiet, at, labels) in ALERT_CASES.items():
        fired = {"exp_labels": labels, "exp_annotations": alerts[name]["annotations"]}
        checks = [{"eval_time": at, "alertname": name, "exp_alerts": [fired]}]
        if name.endswith("Slow"):
            checks.append({"eval_time": at, "alertname": name[: -len("Slow")], "exp_alerts": []})
        tests.append({"interval": "1m", "input_series": firing, "alert_rule_test": checks})
        silent = [{"eval_time": at, "alertname": other, "exp_alerts": []} for other in alerts]
        tests.append({"interval": "1m", "input_series": quiet, "alert_rule_test": silent})
    return {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules_and_each_alert_fires_only_when_it_should(tmp_path):
    rules = rendered_rules("ml")
    assert set(_alert_rules(rules)) == set(ALERT_CASES)  # every alert has its two cases
    readme = (CHART / "README.md").read_text()
    for name, alert in _alert_rules(rules).items():  # its runbook: a heading, GitHub's anchor
        assert alert["annotations"]["runbook_url"].endswith(f"README.md#{name.lower()}")
        assert f"\n### {name}\n" in readme, f"no runbook for {name} in the chart's README"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(promtool_tests(rules), sort_keys=False))
    check = subprocess.run(
        ["promtool", "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run(
        ["promtool", "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_rules_evaluate_on_live_series_and_agree_with_the_traffic(observed):
    prom, sent, latencies = observed
    rules = prom.rules()
    assert len(rules) == sum(len(g["rules"]) for g in rendered_rules(NAMESPACE)["groups"])
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not broken
    total = sum(sent.values())
    server_errors = sum(n for (_, code), n in sent.items() if code == "RESOURCE_EXHAUSTED")
    assert 0 < server_errors < total
    for r in rules:
        if r["type"] != "recording":
            continue
        (series,) = prom.query(r["name"])
        value = float(series["value"][1])
        if r["name"].startswith("vaegan:slo_errors:"):  # INVALID_ARGUMENT is not counted
            assert value == pytest.approx(server_errors / total, abs=0.01), r["name"]
        else:  # slow calls: the server's time is part of the client's
            slow = sum(t > 0.25 for t in latencies) / len(latencies)
            assert 0 <= value <= slow + 0.05, r["name"]
    # The mix's refusals are both a fast burn of the availability budget and shedding: the
    # two alerts are pending (their `for` has not passed); the others are inactive.
    states = {r["name"]: r["state"] for r in rules if r["type"] == "alerting"}
    assert states.pop("VaeganErrorBudgetBurn") == "pending"
    assert states.pop("VaeganShedding") == "pending"
    assert states.pop("VaeganErrorBudgetBurnSlow") == "pending"  # its windows hold only this
    assert set(states.values()) == {"inactive"}, states
