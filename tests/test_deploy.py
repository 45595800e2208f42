"""The Helm chart, rendered by the real Helm engine (helm-python-sdk: Helm's Go SDK), checked
against the Kubernetes API schemas, and the dashboard checked against real metrics."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "k8s" / "vaegan"
K8S_VERSION = "1.30"
VALUE_FILES = {
    "default": {},
    "gpu-objectstore": yaml.safe_load((CHART / "ci" / "gpu-objectstore-values.yaml").read_text()),
    "single-replica": yaml.safe_load((CHART / "ci" / "single-replica-values.yaml").read_text()),
    "secured": yaml.safe_load((CHART / "ci" / "secured-values.yaml").read_text()),
    "colocated": yaml.safe_load((CHART / "ci" / "colocated-values.yaml").read_text()),
}


def render(values: dict) -> list[dict]:
    out = helm.Chart.load(str(CHART)).render(values, name="vaegan", namespace="ml", is_install=True)
    docs = [
        d
        for name, text in sorted(out.items())
        if name.endswith(".yaml")
        for d in yaml.safe_load_all(text)
        if d
    ]
    return docs


def find(docs, kind, suffix=""):
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]


@pytest.mark.parametrize("case", list(VALUE_FILES))
def test_chart_renders_objects_that_validate_against_the_kubernetes_schemas(case):
    docs = render(VALUE_FILES[case])
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ConfigMap",
        "Secret",
    } <= kinds
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            # CRDs, not in the core API schemas: their rules are checked by promtool
            # (test_observability.py)
            assert d["kind"] in ("ServiceMonitor", "PrometheusRule")
            if d["kind"] == "ServiceMonitor":
                assert d["spec"]["endpoints"][0]["port"] == "metrics"
            continue
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


@pytest.mark.parametrize("case", list(VALUE_FILES))
def test_helm_lint_is_clean(case):
    result = helm.lint(str(CHART), VALUE_FILES[case], strict=True, namespace="ml")
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] >= 2] == []  # no warnings; INFO only


def test_values_schema_rejects_a_misspelt_key_and_a_wrong_type():
    from helm_python.errors import HelmValuesError

    with pytest.raises(HelmValuesError, match="additional properties 'gatway' not allowed"):
        render({"gatway": {"replicas": 2}})
    with pytest.raises(HelmValuesError, match="'/gateway/replicas': got string, want integer"):
        render({"gateway": {"replicas": "two"}})
    with pytest.raises(HelmValuesError, match="'/modelRepository/source': value must be one of"):
        render({"modelRepository": {"source": "nfs"}})


def test_triton_is_locked_down_and_gets_a_gpu():
    docs = render(VALUE_FILES["gpu-objectstore"])
    (triton,) = find(docs, "Deployment", "-triton")
    c = triton["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(c["args"])
    for flag in (
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--model-control-mode=explicit",
        "--load-model=vaegan_encoder",
        "--model-repository=s3://models-bucket/vaegan",
    ):
        assert flag in args
    assert re.search(
        r"--grpc-restricted-protocol=model-repository,shared-memory:\S+=\$\(TRITON_ADMIN_KEY\)",
        args,
    )
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["envFrom"] == [{"secretRef": {"name": "vaegan-s3-credentials"}}]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 300
    assert triton["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert not find(docs, "PersistentVolumeClaim")  # the object store replaces the PVC
    (policy,) = find(docs, "NetworkPolicy", "-triton")
    inference = policy["spec"]["ingress"][0]
    assert (
        inference["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        == "gateway"
    )
    assert {p["port"] for p in inference["ports"]} == {"grpc", "http"}


def test_colocated_triton_runs_in_the_gateway_pod_and_shares_a_memory_backed_dev_shm():
    docs = render(VALUE_FILES["colocated"])
    assert not find(docs, "Deployment", "-triton")
    assert {p["metadata"]["name"] for p in find(docs, "PodDisruptionBudget")} == {"vaegan-gateway"}
    (gw,) = find(docs, "Deployment", "-gateway")
    spec = gw["spec"]["template"]["spec"]
    gateway, triton = spec["containers"]
    assert (gateway["name"], triton["name"]) == ("gateway", "triton")
    assert gateway["args"] == ["--triton-url", "localhost:8001"]
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["VAEGAN_TRITON_SHM"] == "true"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    for c in (gateway, triton):  # one /dev/shm for both: the regions the gateway makes
        assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    # The gateway holds the key Triton's restricted shared-memory API asks for, as a file.
    key_dir = next(m for m in gateway["volumeMounts"] if m["name"] == "triton-admin")
    assert env["VAEGAN_TRITON_ADMIN_KEY_FILE"] == key_dir["mountPath"] + "/key"
    assert volumes["triton-admin"]["secret"]["secretName"] == "vaegan-triton-admin"
    assert "shared-memory:vaegan-admin-key=$(TRITON_ADMIN_KEY)" in " ".join(triton["args"])
    # Port and volume names are unique in the pod; Triton's probes use its own.
    ports = [p["name"] for c in spec["containers"] for p in c["ports"]]
    assert len(ports) == len(set(ports))
    assert triton["readinessProbe"]["httpGet"]["port"] == "triton-http"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    # Triton's metrics stay a scrape target of their own (the TritonDown alert's job).
    (svc,) = find(docs, "Service", "-triton")
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "gateway"
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 8002, "targetPort": "triton-metrics", "protocol": "TCP"}
    ]
    assert find(docs, "ServiceMonitor", "-triton")
    (policy,) = find(docs, "NetworkPolicy", "-gateway")  # and no Triton policy: no Triton pods
    assert not find(docs, "NetworkPolicy", "-triton")
    scraped = policy["spec"]["ingress"][2]
    assert {p["port"] for p in scraped["ports"]} == {"metrics", "triton-metrics"}


def test_gateway_probes_rollout_and_security_defaults():
    docs = render({})
    (gw,) = find(docs, "Deployment", "-gateway")
    spec = gw["spec"]["template"]["spec"]
    c = spec["containers"][0]
    # Probes use the plaintext health port, which serves nothing but grpc.health.v1.
    assert c["readinessProbe"]["grpc"] == {"port": 8086, "service": "vaegan.v1.LatentService"}
    assert c["livenessProbe"]["grpc"]["port"] == 8086
    assert gw["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["terminationGracePeriodSeconds"] > 20 + 5  # above drain + preStop
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == 5
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["VAEGAN_GRACE_S"] == "20" and env["VAEGAN_MAX_CONNECTION_AGE_S"] == "300"
    assert env["VAEGAN_WORKERS"] == "1"
    (many,) = find(render({"gateway": {"workers": 4}}), "Deployment", "-gateway")
    assert {"name": "VAEGAN_WORKERS", "value": "4"} in many["spec"]["template"]["spec"][
        "containers"
    ][0]["env"]
    sc = c["securityContext"]
    assert (
        sc["readOnlyRootFilesystem"]
        and not sc["allowPrivilegeEscalation"]
        and sc["capabilities"]["drop"] == ["ALL"]
    )
    assert (
        spec["securityContext"]["runAsNonRoot"]
        and spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    (hpa,) = find(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert find(docs, "Service", "-gateway-headless")[0]["spec"]["clusterIP"] == "None"


def _env(container) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_gateway_tokens_and_tls_come_from_existing_secrets_mounted_as_files():
    docs = render(
        {
            "gateway": {
                "auth": {"existingSecret": "vaegan-tokens"},
                "tls": {"existingSecret": "vaegan-tls", "clientAuth": True},
            }
        }
    )
    (gw,) = find(docs, "Deployment", "-gateway")
    spec = gw["spec"]["template"]["spec"]
    c = spec["containers"][0]
    env = _env(c)
    assert env["VAEGAN_AUTH_TOKENS_FILE"] == "/etc/vaegan/auth/tokens"
    assert "VAEGAN_AUTH_TOKENS" not in env  # never a plain environment string
    assert (env["VAEGAN_TLS_CERT"], env["VAEGAN_TLS_KEY"], env["VAEGAN_TLS_CLIENT_CA"]) == (
        "/etc/vaegan/tls/tls.crt",
        "/etc/vaegan/tls/tls.key",
        "/etc/vaegan/tls/ca.crt",
    )
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["auth"]["secret"]["secretName"] == "vaegan-tokens"
    assert volumes["tls"]["secret"]["secretName"] == "vaegan-tls"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["auth"]["readOnly"] and mounts["tls"]["readOnly"]
    assert c["readinessProbe"]["grpc"]["port"] == env_port(env)  # probes need no TLS
    notes = helm.Chart.load(str(CHART)).render(
        {"gateway": {"tls": {"existingSecret": "vaegan-tls"}}},
        name="vaegan",
        namespace="ml",
        is_install=True,
    )
    text = next(v for k, v in notes.items() if k.endswith("NOTES.txt"))
    assert "-plaintext" not in text and "-cacert" in text and "--tls-ca" in text
    plain = render({})
    (gw,) = find(plain, "Deployment", "-gateway")
    assert not {"VAEGAN_AUTH_TOKENS_FILE", "VAEGAN_TLS_CERT"} & set(
        _env(gw["spec"]["template"]["spec"]["containers"][0])
    )


def env_port(env: dict[str, str]) -> int:
    return int(env["VAEGAN_HEALTH_PORT"])


def test_network_policies_deny_by_default_and_scope_metrics_to_the_scrapers():
    docs = render(
        {"networkPolicy": {"gatewayFrom": [{"podSelector": {"matchLabels": {"role": "api"}}}]}}
    )
    policies = {p["metadata"]["name"]: p["spec"] for p in find(docs, "NetworkPolicy")}
    deny = policies["vaegan-default-deny"]
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    assert deny["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "vaegan"
    gw = policies["vaegan-gateway"]["ingress"]
    by_port = {r["ports"][0]["port"]: r.get("from") for r in gw}
    assert by_port["grpc"] == [{"podSelector": {"matchLabels": {"role": "api"}}}]
    scrapers = [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    assert by_port["metrics"] == scrapers
    triton = policies["vaegan-triton"]["ingress"]
    metrics_rule = next(r for r in triton if r["ports"][0]["port"] == "metrics")
    assert metrics_rule["from"] == scrapers  # no longer every pod of the namespace
    # Without gatewayFrom the API is open to any source, the rest stays scoped.
    (open_gw,) = [
        p for p in find(render({}), "NetworkPolicy") if p["metadata"]["name"] == "vaegan-gateway"
    ]
    assert "from" not in open_gw["spec"]["ingress"][0]


def test_disruption_budgets_never_block_a_drain_even_with_one_replica():
    docs = render(VALUE_FILES["single-replica"])
    for pdb in find(docs, "PodDisruptionBudget"):
        assert "minAvailable" not in pdb["spec"] and pdb["spec"]["maxUnavailable"] >= 1
    assert not find(docs, "HorizontalPodAutoscaler")
    (triton,) = find(docs, "Deployment", "-triton")
    assert (
        "nvidia.com/gpu"
        not in triton["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )


def test_dockerfiles_pin_bases_run_unprivileged_and_start_the_gateway():
    gw = (ROOT / "deploy" / "docker" / "gateway.Dockerfile").read_text()
    tr = (ROOT / "deploy" / "docker" / "triton.Dockerfile").read_text()
    for text in (gw, tr):
        bases = re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.M)
        assert bases and all(":" in b and not b.endswith(":latest") for b in bases)
    assert re.search(r"^USER 10001:10001$", gw, re.M)
    assert 'ENTRYPOINT ["vaegan", "serve"]' in gw
    assert "'.[serving]'" in gw and "torch" not in gw.replace("no torch", "")
    assert "24.10-py3" in tr and "numpy<2" in tr


# Triton's GPU metrics exist only on GPU machines; the names are those of Triton's metrics
# documentation (docs/user_guide/metrics.md, "GPU Metrics").
TRITON_GPU_METRICS = {
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
    "nv_gpu_power_limit",
    "nv_energy_consumption",
}


def dashboard_metric_names() -> set[str]:
    import json

    dash = json.loads((CHART / "dashboards" / "vaegan.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    return {m for e in exprs for m in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", e)}


def _families(metrics_text: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    names = set()
    for fam in text_string_to_metric_families(metrics_text):
        names.add(fam.name)
        names.update(s.name for s in fam.samples)
    return names


@pytest.mark.integration
def test_every_dashboard_metric_is_exported_by_the_gateway_or_triton(repo):
    from gateway_harness import GatewayThread

    from vaegan.client import LatentClient
    from vaegan.export.local_triton import LocalTriton
    from vaegan.service.settings import Settings

    with (
        LocalTriton(repo) as triton,
        GatewayThread(Settings(triton_url=triton.grpc_url)) as gw,
    ):
        with LatentClient(gw.target) as c:
            c.generate(np.zeros((2, 16), np.float32))
            c.encode([_png()])
        exported = _families(urllib.request.urlopen(gw.metrics_url).read().decode())
        exported |= _families(urllib.request.urlopen(triton.metrics_url).read().decode())
    wanted = dashboard_metric_names()
    assert any(m.startswith("nv_inference") for m in wanted) and any(
        m.startswith("vaegan_") for m in wanted
    )
    missing = wanted - exported - TRITON_GPU_METRICS
    assert not missing, f"dashboard panels on metrics nobody exports: {sorted(missing)}"


def _png() -> bytes:
    from conftest import encode, pattern

    return encode(pattern(40, 40), "PNG")


def test_gateway_reads_latent_directions_from_the_repository_volume_read_only():
    docs = render({})
    (gw,) = find(docs, "Deployment", "-gateway")
    pod = gw["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert {"name": "VAEGAN_DIRECTIONS_REPOSITORY", "value": "/models"} in c["env"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "models")
    assert mount["readOnly"] is True and mount["mountPath"] == "/models"
    claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    (gw_os,) = find(render(VALUE_FILES["gpu-objectstore"]), "Deployment", "-gateway")
    assert "models" not in {v["name"] for v in gw_os["spec"]["template"]["spec"]["volumes"]}
