"""The training chart, rendered by the real Helm engine and checked like the serving chart:
core objects against the Kubernetes schemas; the PyTorchJob (a CRD) by its pod templates,
which are ordinary PodTemplateSpecs, and by the fields the Training Operator reads."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "k8s" / "vaegan-training"
K8S_VERSION = "1.30"
VALUE_FILES = {
    "default": {},
    **{
        p.stem.removesuffix("-values"): yaml.safe_load(p.read_text())
        for p in sorted((CHART / "ci").glob("*-values.yaml"))
    },
}


def render(values: dict) -> list[dict]:
    out = helm.Chart.load(str(CHART)).render(values, name="faces", namespace="ml", is_install=True)
    return [
        d for n, t in sorted(out.items()) if n.endswith(".yaml") for d in yaml.safe_load_all(t) if d
    ]


def _pod(template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": template["spec"]}


def _train_script(container: dict) -> str:
    return container["args"][0]


@pytest.mark.parametrize("case", list(VALUE_FILES))
def test_training_chart_renders_objects_that_validate(case):
    docs = render(VALUE_FILES[case])
    for d in docs:
        if d["kind"] == "PyTorchJob":
            for role, spec in d["spec"]["pytorchReplicaSpecs"].items():
                assert role in ("Master", "Worker") and spec["replicas"] >= 1
                assert spec["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
                kubernetes_validate.validate(_pod(spec["template"]), K8S_VERSION, strict=True)
        else:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)


@pytest.mark.parametrize("case", list(VALUE_FILES))
def test_training_chart_lint_is_clean(case):
    result = helm.lint(str(CHART), VALUE_FILES[case], strict=True, namespace="ml")
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] >= 2] == []


def test_indexed_job_runs_torchrun_with_c10d_rendezvous_on_pod_zero():
    docs = render({})
    job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].endswith("-train"))
    svc = next(d for d in docs if d["kind"] == "Service")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"] == job["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    c = pod["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["RDZV_HOST"]["value"] == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    assert "job-completion-index" in env["NODE_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    script = _train_script(c)
    for flag in (
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        '--rdzv-endpoint="$RDZV_HOST:29400"',
    ):
        assert flag in script
    assert "vaegan.cli train --data /data" in script and "--resume" in script
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["data"]["readOnly"] is True and mounts["shm"]["mountPath"] == "/dev/shm"


def test_pytorchjob_has_a_master_and_workers_with_gpus_and_the_global_batch():
    docs = render(VALUE_FILES["pytorchjob"])
    (job,) = [d for d in docs if d["kind"] == "PyTorchJob"]
    assert job["apiVersion"] == "kubeflow.org/v1" and job["spec"]["nprocPerNode"] == "8"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    c = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert c["name"] == "pytorch"  # the operator injects its environment into this container
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
    script = _train_script(c)
    assert "--nnodes=4" in script and "--nproc-per-node=8" in script
    assert '--set "batch_size=512"' in script and '--set "lr_scaling=sqrt"' in script
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]  # existingClaim given


def test_export_job_waits_for_training_and_writes_the_serving_charts_repository():
    docs = render(VALUE_FILES["pytorchjob"])
    job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].endswith("-export"))
    pod = job["spec"]["template"]["spec"]
    wait = pod["initContainers"][0]
    assert "faces-512/TRAINED" in wait["args"][0]
    c = pod["containers"][0]
    assert c["command"] == ["vaegan", "export"]
    assert c["args"][:6] == [
        "--checkpoint",
        "/checkpoints/faces-512/checkpoints/last.pt",
        "--repository",
        "/models",
        "--backend",
        "tensorrt",
    ]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1  # TensorRT plans are built on a GPU
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"checkpoints": "vaegan-runs", "models": "vaegan-models"}
    # The serving chart (release "vaegan", default values) mounts that same claim in Triton.
    from test_deploy import render as render_serving

    triton = next(
        d
        for d in render_serving({})
        if d["kind"] == "Deployment" and "triton" in d["metadata"]["name"]
    )
    served = [
        v["persistentVolumeClaim"]["claimName"]
        for v in triton["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert served == [claims["models"]]


def test_cpu_ranks_use_no_gpu():
    docs = render(VALUE_FILES["cpu-indexedjob"])
    job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].endswith("-train"))
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert "--nproc-per-node=2" in _train_script(c)


def test_training_values_schema_rejects_a_misspelt_key_and_an_unknown_launcher():
    from helm_python.errors import HelmValuesError

    for bad in ({"launcher": "mpiJob"}, {"train": {"stpes": 10}}, {"nodes": "two"}):
        with pytest.raises(HelmValuesError):
            render(bad)


def test_training_image_pins_its_base_and_runs_as_the_charts_user():
    text = (ROOT / "deploy" / "docker" / "training.Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm" in text  # an exact patch release
    assert "'.[training]'" in text
    uid = yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]["runAsUser"]
    assert f"USER {uid}:{uid}" in text


@pytest.mark.parametrize("case", list(VALUE_FILES))
def test_every_training_pod_matches_the_serving_charts_security_settings(case):
    pods = []
    for d in render(VALUE_FILES[case]):
        if d["kind"] == "PyTorchJob":
            pods += [s["template"]["spec"] for s in d["spec"]["pytorchReplicaSpecs"].values()]
        elif d["kind"] == "Job":
            pods.append(d["spec"]["template"]["spec"])
    assert pods
    for pod in pods:
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"]
        assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"]
        for c in pod["containers"]:  # the ones that write caches: /tmp, as HOME
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"], c["name"]
            assert {"name": "HOME", "value": "/tmp"} in c["env"], c["name"]
