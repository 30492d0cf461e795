"""deploy/ holds together without a cluster or a Docker engine: every kustomize overlay builds,
every object parses with the official `kubernetes` models (an unknown field fails), and the
built objects keep flowq's rules: gRPC probes on the right health names, grace periods longer
than the drain, locked-down containers, pinned images, RBAC derived from the executor's own
calls, known settings only; the compose file and the Dockerfile name real entry points."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import kubernetes.client
import pytest
import yaml

from flowq_executor.kube.render import render
from flowq_executor.runner import HAND_BACK_SECONDS
from tests.support.kustomize import build, kubectl_build, python_build

ROOT = Path(__file__).resolve().parent.parent
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["base", "overlays/dev", "overlays/prod"]
HEALTH = {
    "apiserver": "flowq.v1.WorkflowService",
    "dispatcher": "flowq.v1.QueueService",
    "executor": "flowq.v1.ExecutorService",
}
PROMETHEUS_OPERATOR = "monitoring.coreos.com/"
SCRIPTS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


@pytest.fixture(scope="module", params=OVERLAYS)
def built(request) -> list[dict]:
    return build(KUSTOMIZE / request.param)


def flowq_deployments(objects: list[dict]) -> dict[str, dict]:
    return {
        o["metadata"]["name"].removeprefix("flowq-"): o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"].startswith("flowq-")
    }


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in ("Deployment", "Job")
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_fallback_builder_agrees_with_kubectl(overlay: str) -> None:
    ours = python_build(KUSTOMIZE / overlay)
    theirs = kubectl_build(KUSTOMIZE / overlay)
    assert ours, overlay
    if theirs is None:  # no kubectl here: the fallback is what the other tests use
        return

    def key(obj: dict) -> tuple[str, str]:
        return obj["kind"], obj["metadata"]["name"]

    assert sorted(map(key, ours)) == sorted(map(key, theirs))
    for mine, reference in zip(sorted(ours, key=key), sorted(theirs, key=key), strict=True):
        assert mine == reference, key(mine)


def test_every_object_parses_with_the_official_models(built: list[dict]) -> None:
    api = kubernetes.client.ApiClient()
    for obj in built:
        if obj["apiVersion"].startswith(PROMETHEUS_OPERATOR):
            continue  # CRDs: the client has no models for them; checked below
        version = obj["apiVersion"].split("/")[-1]
        model = getattr(kubernetes.client, f"{version.capitalize()}{obj['kind']}")
        again = api.sanitize_for_serialization(model.from_dict(obj))
        # A field the model does not know is dropped on the way: the round trip shows it.
        assert json.loads(json.dumps(again)) == json.loads(json.dumps(obj)), obj["metadata"]


def test_probes_and_grace_periods_follow_the_drain(built: list[dict]) -> None:
    settings = next(o for o in built if o["kind"] == "ConfigMap")["data"]
    grace = float(settings["FLOWQ_SHUTDOWN_GRACE_SECONDS"])
    deployments = flowq_deployments(built)
    assert set(deployments) == set(HEALTH)
    for role, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        assert container["livenessProbe"]["grpc"] == {"port": port}  # "" is liveness
        assert container["readinessProbe"]["grpc"] == {"port": port, "service": HEALTH[role]}
        assert container["args"] == [f"flowq-{role}"] and container["args"][0] in SCRIPTS
        # Kubernetes kills at the end of terminationGracePeriodSeconds: the drain must fit.
        needed = grace + (HAND_BACK_SECONDS if role == "executor" else 0)
        assert pod["terminationGracePeriodSeconds"] > needed, role


def test_containers_are_locked_down_and_images_pinned(built: list[dict]) -> None:
    for name, pod in pod_specs(built):
        for container in pod["containers"]:
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
            assert "resources" in container and container["resources"]["limits"], name
            if not name.startswith("flowq-"):
                continue  # the dev overlay's throwaway PostgreSQL and Redis
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name


def test_selectors_match_their_pods(built: list[dict]) -> None:
    pods = [o["spec"]["template"]["metadata"]["labels"] for o in built if o["kind"] == "Deployment"]
    for obj in built:
        if obj["kind"] == "Deployment":
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()
        if obj["kind"] == "Service":
            selector = obj["spec"]["selector"].items()
            assert any(selector <= labels.items() for labels in pods), obj["metadata"]["name"]
        if obj["metadata"]["name"].startswith("flowq"):
            assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "flowq"


def test_the_executor_role_allows_exactly_what_its_step_runners_call(built: list[dict]) -> None:
    source = (ROOT / "services/executor/flowq_executor/kube/client.py").read_text()
    calls = set(re.findall(r"self\._dynamic\.(\w+)\(", source))
    verbs_of = {  # Kubernetes' verbs for each DynamicClient call
        "get": {"get", "list"},  # with a name: get; with a label selector: list
        "server_side_apply": {"patch", "create"},  # apply creates what is missing
        "create": {"create"},
        "delete": {"delete"},
    }
    assert calls <= set(verbs_of), f"map the new client calls to verbs: {calls - set(verbs_of)}"
    verbs = set().union(*(verbs_of[c] for c in calls))
    kinds = {
        o["kind"]
        for t in ("webservice", "store", "config", "secret")
        for o in render(t, {"image": "x:1", "ports": [80], "data": {}}, "app", "step")
    } | {"Job"}
    plural = {k: k.lower() + "s" for k in kinds}
    role = next(o for o in built if o["kind"] == "Role")
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        for resource in rule["resources"]:
            granted[resource] = set(rule["verbs"])
    for kind in kinds:
        assert granted.get(plural[kind]) == verbs, kind
    assert granted["pods"] == {"get", "list"}  # readiness causes and Job pods
    assert ("read_namespaced_pod_log" in source) == (granted.get("pods/log") == {"get"})


def test_every_setting_in_the_manifests_is_one_flowq_reads(built: list[dict]) -> None:
    known = set(re.findall(r'"(FLOWQ_[A-Z_]+)"', (ROOT / "libs/flowq/config.py").read_text()))
    named = set()
    for obj in built:
        if obj["kind"] == "ConfigMap":
            named |= set(obj["data"])
        for _name, pod in pod_specs(built):
            for container in pod["containers"]:
                named |= {e["name"] for e in container.get("env", [])}
    flowq_names = {n for n in named if n.startswith("FLOWQ_")}
    assert flowq_names <= known, flowq_names - known
    for _name, pod in pod_specs(built):
        env = {e["name"] for c in pod["containers"] for e in c.get("env", [])}
        if _name.startswith("flowq-"):
            assert "FLOWQ_DATABASE_URL" in env, _name  # the one setting without a usable default


def test_prod_monitoring_scrapes_every_service_and_alerts_as_operations_md_says() -> None:
    built = build(KUSTOMIZE / "overlays/prod")
    crds = {o["kind"]: o for o in built if o["apiVersion"].startswith(PROMETHEUS_OPERATOR)}
    assert set(crds) == {"ServiceMonitor", "PrometheusRule"}
    ports = {e["port"] for e in crds["ServiceMonitor"]["spec"]["endpoints"]}
    selector = crds["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items()
    for service in (o for o in built if o["kind"] == "Service"):
        assert selector <= service["metadata"]["labels"].items()
        assert ports & {p["name"] for p in service["spec"]["ports"]}, service["metadata"]["name"]
    text = (ROOT / "docs/operations.md").read_text()
    documented = yaml.safe_load(
        re.search(r"```yaml\n(.*?)```", text[text.index("## Alerts") :], re.S).group(1)
    )
    assert crds["PrometheusRule"]["spec"]["groups"] == documented["groups"]
    assert crds["PrometheusRule"]["metadata"]["namespace"] == "flowq"


def test_compose_runs_every_service_with_a_health_check_on_real_entry_points() -> None:
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "apiserver", "dispatcher", "executor"} <= set(services)
    assert services["executor"]["deploy"]["replicas"] >= 2
    for name, service in services.items():
        assert not service["image"].endswith(":latest") and ":" in service["image"], name
        if name != "migrate":
            assert "healthcheck" in service, name
        command = service.get("command") or []
        if command:
            assert command[0] in SCRIPTS, name
        for check in (service.get("healthcheck") or {}).get("test", [])[1:2]:
            if service["image"].startswith("flowq"):
                assert check in SCRIPTS, name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["apiserver"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )


def test_the_dockerfile_runs_real_entry_points_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert json.loads(cmd)[0] in SCRIPTS
    assert re.search(r"^USER 10001", dockerfile, re.M)
    assert 'ENTRYPOINT ["/usr/bin/tini", "--"]' in dockerfile
    final = dockerfile.rsplit("\nFROM ", 1)[1]
    assert "gcc" not in final and "build-essential" not in final
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
