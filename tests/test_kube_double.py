"""The Kubernetes API test double speaks the protocol the real `kubernetes` client expects.

Every test drives the double through the official client over real HTTP (typed APIs and the
DynamicClient). Tests that take the `kube` fixture run unchanged against a real cluster when
FLOWQ_TEST_KUBECONFIG is set; the few that need the double itself construct one.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import kubernetes
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import BadRequestError, ConflictError, NotFoundError

from flowq.netutil import port_listening, wait_port_closed
from tests.support.kube_double import KubeApiDouble, KubeTarget

T = TypeVar("T")
IMAGE = "busybox:1.36"
LONG_RUNNING = ["sh", "-c", "echo started; sleep 3600"]
DEADLINE = 60.0  # generous for a real cluster; the double gets there in about a second
MANAGER = "flowq-test"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = DEADLINE) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {result!r}")
        time.sleep(0.05)


@pytest.fixture
def api(kube: KubeTarget) -> Iterator[client.ApiClient]:
    with kube.api() as api_client:
        yield api_client


@pytest.fixture
def dyn(kube: KubeTarget, api: client.ApiClient) -> DynamicClient:
    return kube.dynamic(api)


def deployment(name: str, image: str = IMAGE, **pod_spec: object) -> dict:
    labels = {"app": name}
    container = {"name": "app", "image": image, "command": LONG_RUNNING}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"team": "flowq"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], **pod_spec},
            },
        },
    }


def job(name: str, script: str, **spec: object) -> client.V1Job:
    container = client.V1Container(name="main", image=IMAGE, command=["sh", "-c", script])
    pod_spec = client.V1PodSpec(containers=[container], restart_policy="Never")
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(template=client.V1PodTemplateSpec(spec=pod_spec), **spec),
    )


def rolled_out(status: dict, generation: int, replicas: int = 1) -> bool:
    """kubectl's rule for `rollout status deployment`."""
    return (
        status.get("observedGeneration", 0) >= generation
        and status.get("updatedReplicas", 0) == replicas
        and status.get("replicas", 0) == replicas
        and status.get("availableReplicas", 0) == replicas
    )


def condition(obj: object, kind: str) -> object | None:
    return next((c for c in obj.status.conditions or [] if c.type == kind), None)


# -- discovery and writes -------------------------------------------------------------------


def test_discovery_then_apply_creates_and_apply_again_bumps_generation_and_merges_labels(
    kube: KubeTarget, dyn: DynamicClient
) -> None:
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    assert deployments.namespaced and "status" in deployments.subresources
    assert dyn.resources.get(api_version="v1", kind="Pod").subresources["log"]
    assert dyn.resources.get(api_version="batch/v1", kind="Job").name == "jobs"
    assert kube.discovery_cache.exists()  # the cache went to the test's directory, not /tmp

    body = deployment("web")
    created = dyn.server_side_apply(
        deployments, body, namespace=kube.namespace, field_manager=MANAGER
    )
    assert created.metadata.generation == 1
    assert created.metadata.uid and created.metadata.creationTimestamp
    assert created.metadata.namespace == kube.namespace

    same = dyn.server_side_apply(deployments, body, namespace=kube.namespace, field_manager=MANAGER)
    assert same.metadata.generation == 1
    assert same.metadata.uid == created.metadata.uid

    body["metadata"]["labels"] = {"release": "2"}
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "V", "value": "2"}]
    updated = dyn.server_side_apply(
        deployments, body, namespace=kube.namespace, field_manager=MANAGER
    )
    assert updated.metadata.generation == 2
    assert dict(updated.metadata.labels) == {"team": "flowq", "release": "2"}
    assert int(updated.metadata.resourceVersion) > int(created.metadata.resourceVersion)

    with pytest.raises(BadRequestError):  # server-side apply needs a field manager
        dyn.server_side_apply(deployments, body, namespace=kube.namespace)


def test_list_by_label_selector(
    kube: KubeTarget, api: client.ApiClient, dyn: DynamicClient
) -> None:
    core = client.CoreV1Api(api)
    for name, labels in (("a", {"tier": "web", "env": "prod"}), ("b", {"tier": "db"}), ("c", {})):
        core.create_namespaced_config_map(
            kube.namespace, {"metadata": {"name": name, "labels": labels}, "data": {"k": name}}
        )

    def names(selector: str) -> list[str]:
        found = core.list_namespaced_config_map(kube.namespace, label_selector=selector)
        return sorted(cm.metadata.name for cm in found.items if cm.metadata.name in "abc")

    assert names("tier=web") == ["a"]
    assert names("tier==db") == ["b"]
    assert names("tier!=web") == ["b", "c"]
    assert names("tier") == ["a", "b"]
    assert names("!tier") == ["c"]
    assert names("tier,env=prod") == ["a"]
    assert names("tier in (web,db)") == ["a", "b"]
    configmaps = dyn.resources.get(api_version="v1", kind="ConfigMap")
    listed = dyn.get(configmaps, namespace=kube.namespace, label_selector="tier=db")
    assert listed.kind == "ConfigMapList" and listed.metadata.resourceVersion
    assert [cm.metadata.name for cm in listed.items] == ["b"]


def test_create_of_an_existing_name_is_a_conflict(
    kube: KubeTarget, api: client.ApiClient, dyn: DynamicClient
) -> None:
    core = client.CoreV1Api(api)
    body = {"metadata": {"name": "settings"}, "data": {"a": "1"}}
    core.create_namespaced_config_map(kube.namespace, body)
    with pytest.raises(ApiException) as typed:
        core.create_namespaced_config_map(kube.namespace, body)
    assert typed.value.status == 409
    assert '"reason":"AlreadyExists"' in typed.value.body.replace(" ", "")

    configmaps = dyn.resources.get(api_version="v1", kind="ConfigMap")
    with pytest.raises(ConflictError):
        dyn.create(configmaps, body, namespace=kube.namespace)


def test_merge_patch_updates_and_is_not_found_when_absent(
    kube: KubeTarget, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(
        kube.namespace,
        {"metadata": {"name": "cm", "labels": {"a": "1"}}, "data": {"x": "1", "y": "2"}},
    )
    patched = core.patch_namespaced_config_map(
        "cm", kube.namespace, {"metadata": {"labels": {"b": "2"}}, "data": {"y": None, "z": "3"}}
    )
    assert patched.metadata.labels == {"a": "1", "b": "2"}
    assert patched.data == {"x": "1", "z": "3"}
    with pytest.raises(ApiException) as absent:
        core.patch_namespaced_config_map("nothing", kube.namespace, {"data": {"a": "b"}})
    assert absent.value.status == 404


def test_secret_string_data_is_stored_as_base64_data(
    kube: KubeTarget, api: client.ApiClient
) -> None:
    core = client.CoreV1Api(api)
    body = {"metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}}
    created = core.create_namespaced_secret(kube.namespace, body)
    assert created.string_data is None
    read = core.read_namespaced_secret("creds", kube.namespace)
    assert read.type == "Opaque"
    assert base64.b64decode(read.data["password"]).decode() == "s3cret"


# -- workloads ------------------------------------------------------------------------------


def test_deployment_rolls_out_and_its_pods_go_when_it_is_deleted(
    kube: KubeTarget, api: client.ApiClient, dyn: DynamicClient
) -> None:
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    created = dyn.server_side_apply(
        deployments, deployment("web"), namespace=kube.namespace, field_manager=MANAGER
    )
    assert not rolled_out(created.to_dict().get("status") or {}, 1)

    def status() -> dict:
        return dyn.get(deployments, "web", kube.namespace).to_dict().get("status") or {}

    done = wait_for("the Deployment to roll out", lambda: rolled_out(status(), 1) and status())
    conditions = {c["type"]: c for c in done["conditions"]}
    assert conditions["Available"]["status"] == "True"
    assert conditions["Progressing"]["reason"] == "NewReplicaSetAvailable"
    assert done["readyReplicas"] == 1

    core = client.CoreV1Api(api)
    (pod,) = core.list_namespaced_pod(kube.namespace, label_selector="app=web").items
    assert re.fullmatch(r"web-[a-z0-9]{5,10}-[a-z0-9]{5}", pod.metadata.name)
    assert pod.status.phase == "Running"
    assert condition(pod, "Ready").status == "True"
    assert pod.status.container_statuses[0].ready
    owners = pod.metadata.owner_references
    assert owners and owners[0].controller

    dyn.delete(deployments, "web", kube.namespace)
    with pytest.raises(NotFoundError):
        dyn.get(deployments, "web", kube.namespace)
    with pytest.raises(ApiException) as gone:
        client.AppsV1Api(api).read_namespaced_deployment("web", kube.namespace)
    assert gone.value.status == 404
    wait_for(
        "the Deployment's pods to go",
        lambda: not core.list_namespaced_pod(kube.namespace, label_selector="app=web").items,
    )


def test_deployment_update_replaces_pods_after_the_new_ones_are_ready(
    kube: KubeTarget, api: client.ApiClient, dyn: DynamicClient
) -> None:
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    body = deployment("web")
    dyn.server_side_apply(deployments, body, namespace=kube.namespace, field_manager=MANAGER)
    core = client.CoreV1Api(api)
    wait_for(
        "the first rollout",
        lambda: rolled_out(dyn.get(deployments, "web", kube.namespace).to_dict()["status"], 1),
    )
    (first,) = core.list_namespaced_pod(kube.namespace, label_selector="app=web").items

    body["spec"]["template"]["metadata"]["annotations"] = {"restartedAt": "now"}
    updated = dyn.server_side_apply(
        deployments, body, namespace=kube.namespace, field_manager=MANAGER
    )
    assert updated.metadata.generation == 2
    wait_for(
        "the second rollout",
        lambda: rolled_out(dyn.get(deployments, "web", kube.namespace).to_dict()["status"], 2),
    )
    pods = wait_for(
        "only the new pod to remain",
        lambda: [
            p
            for p in core.list_namespaced_pod(kube.namespace, label_selector="app=web").items
            if p.metadata.deletion_timestamp is None
        ],
    )
    assert [p.metadata.name for p in pods] != [first.metadata.name]


NEVER_READY = {
    "unpullable-image": ({"image": "registry.invalid/app:1"}, {}),
    "crash-loop": ({"command": ["sh", "-c", "echo booting; exit 2"]}, {}),
    "unschedulable": ({}, {"nodeSelector": {"flowq.test/no-such-node": "yes"}}),
}


@pytest.mark.parametrize("case", NEVER_READY, ids=list(NEVER_READY))
def test_deployment_that_cannot_run_never_becomes_ready_and_its_pod_says_why(
    case: str, kube: KubeTarget, api: client.ApiClient, dyn: DynamicClient
) -> None:
    container_fields, pod_fields = NEVER_READY[case]
    body = deployment("broken", **pod_fields)
    body["spec"]["template"]["spec"]["containers"][0].update(container_fields)
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    dyn.server_side_apply(deployments, body, namespace=kube.namespace, field_manager=MANAGER)
    core = client.CoreV1Api(api)

    def pod() -> client.V1Pod | None:
        pods = core.list_namespaced_pod(kube.namespace, label_selector="app=broken").items
        return pods[0] if pods else None

    if case == "unpullable-image":
        found = wait_for("ImagePullBackOff", lambda: _waiting(pod(), "ImagePullBackOff"))
        assert found.status.phase == "Pending"
        waiting = found.status.container_statuses[0].state.waiting
        assert waiting.message == 'Back-off pulling image "registry.invalid/app:1"'
    elif case == "crash-loop":
        found = wait_for("CrashLoopBackOff", lambda: _waiting(pod(), "CrashLoopBackOff"))
        assert found.status.phase == "Running"
        status = found.status.container_statuses[0]
        assert status.restart_count >= 1
        assert status.last_state.terminated.exit_code == 2
        log = core.read_namespaced_pod_log(found.metadata.name, kube.namespace)
        assert "booting" in log
    else:
        found = wait_for(
            "PodScheduled=False", lambda: (p := pod()) and condition(p, "PodScheduled") and p
        )
        scheduled = condition(found, "PodScheduled")
        assert (scheduled.status, scheduled.reason) == ("False", "Unschedulable")
        assert "didn't match Pod's node affinity/selector" in scheduled.message
        assert found.status.phase == "Pending"

    give_up = time.monotonic() + 1.0  # a short look: readiness never comes
    while time.monotonic() < give_up:
        status = dyn.get(deployments, "broken", kube.namespace).to_dict().get("status") or {}
        assert not status.get("readyReplicas") and not rolled_out(status, 1)
        time.sleep(0.1)
    available = next(c for c in status["conditions"] if c["type"] == "Available")
    assert available["status"] == "False"


def _waiting(pod: client.V1Pod | None, reason: str) -> client.V1Pod | None:
    statuses = (pod.status.container_statuses or []) if pod else []
    if any(s.state.waiting and s.state.waiting.reason == reason for s in statuses):
        return pod
    return None


def test_statefulset_makes_bound_claims_that_outlive_it(
    kube: KubeTarget, api: client.ApiClient, dyn: DynamicClient
) -> None:
    labels = {"app": "db"}
    body = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 2,
            "serviceName": "db",
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "db", "image": IMAGE, "command": LONG_RUNNING}]},
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            ],
        },
    }
    statefulsets = dyn.resources.get(api_version="apps/v1", kind="StatefulSet")
    dyn.server_side_apply(statefulsets, body, namespace=kube.namespace, field_manager=MANAGER)

    def status() -> dict:
        return dyn.get(statefulsets, "db", kube.namespace).to_dict().get("status") or {}

    done = wait_for(
        "the StatefulSet to be ready", lambda: status().get("readyReplicas") == 2 and status()
    )
    assert done["currentRevision"] == done["updateRevision"]
    assert done["updatedReplicas"] == done["currentReplicas"] == 2
    core = client.CoreV1Api(api)
    pods = core.list_namespaced_pod(kube.namespace, label_selector="app=db").items
    assert sorted(p.metadata.name for p in pods) == ["db-0", "db-1"]

    def claims() -> dict[str, str]:
        found = core.list_namespaced_persistent_volume_claim(
            kube.namespace, label_selector="app=db"
        )
        return {c.metadata.name: c.status.phase for c in found.items}

    wait_for("both claims bound", lambda: claims() == {"data-db-0": "Bound", "data-db-1": "Bound"})

    dyn.delete(statefulsets, "db", kube.namespace, propagation_policy="Background")
    wait_for(
        "the pods to go",
        lambda: not core.list_namespaced_pod(kube.namespace, label_selector="app=db").items,
    )
    assert claims() == {"data-db-0": "Bound", "data-db-1": "Bound"}


def test_daemonset_runs_one_pod_on_the_one_node(kube: KubeTarget, dyn: DynamicClient) -> None:
    body = deployment("agent")
    body["kind"] = "DaemonSet"
    del body["spec"]["replicas"]
    daemonsets = dyn.resources.get(api_version="apps/v1", kind="DaemonSet")
    dyn.server_side_apply(daemonsets, body, namespace=kube.namespace, field_manager=MANAGER)

    def status() -> dict:
        return dyn.get(daemonsets, "agent", kube.namespace).to_dict().get("status") or {}

    done = wait_for(
        "the DaemonSet to be ready",
        lambda: (
            (s := status()).get("numberReady", 0) >= 1
            and s["numberReady"] == s["desiredNumberScheduled"]
            and s
        ),
    )
    assert done["observedGeneration"] == 1
    assert done["updatedNumberScheduled"] == done["numberAvailable"] == done["numberReady"]


# -- jobs -------------------------------------------------------------------------------------


def test_job_that_succeeds_logs_its_echoes(kube: KubeTarget, api: client.ApiClient) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(kube.namespace, job("hello", "echo hello; sleep 1"))
    running = wait_for(
        "the Job to start",
        lambda: (j := batch.read_namespaced_job("hello", kube.namespace)).status.active and j,
    )
    assert running.status.start_time is not None
    done = wait_for(
        "the Job to complete",
        lambda: (j := batch.read_namespaced_job("hello", kube.namespace)).status.succeeded and j,
    )
    assert condition(done, "Complete").status == "True"
    assert done.status.completion_time is not None and not done.status.active

    (pod,) = core.list_namespaced_pod(kube.namespace, label_selector="job-name=hello").items
    assert re.fullmatch(r"hello-[a-z0-9]{5}", pod.metadata.name)
    assert pod.metadata.labels["batch.kubernetes.io/job-name"] == "hello"
    assert pod.metadata.owner_references[0].kind == "Job"
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    log = core.read_namespaced_pod_log(pod.metadata.name, kube.namespace)
    assert "hello" in log.splitlines()
    if kube.double is not None:
        assert log.splitlines()[-1] == "(Kubernetes API test double: exit code 0)"
        tail = core.read_namespaced_pod_log(pod.metadata.name, kube.namespace, tail_lines=1)
        assert tail == "(Kubernetes API test double: exit code 0)\n"


def test_job_that_exits_non_zero_fails_with_its_exit_code(
    kube: KubeTarget, api: client.ApiClient
) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(
        kube.namespace, job("boom", "echo about to fail; exit 3", backoff_limit=0)
    )
    failed = wait_for(
        "the Job to fail",
        lambda: (
            (j := batch.read_namespaced_job("boom", kube.namespace))
            and condition(j, "Failed")
            and j
        ),
    )
    assert condition(failed, "Failed").reason == "BackoffLimitExceeded"
    assert failed.status.failed == 1 and not failed.status.succeeded
    (pod,) = core.list_namespaced_pod(kube.namespace, label_selector="job-name=boom").items
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")


def test_job_past_its_active_deadline_fails_and_its_pod_goes(
    kube: KubeTarget, api: client.ApiClient
) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(kube.namespace, job("slow", "sleep 600", active_deadline_seconds=2))
    failed = wait_for(
        "the deadline to pass",
        lambda: (
            (j := batch.read_namespaced_job("slow", kube.namespace))
            and condition(j, "Failed")
            and j
        ),
    )
    assert condition(failed, "Failed").reason == "DeadlineExceeded"
    wait_for(
        "the pod to go",
        lambda: (
            not [
                p
                for p in core.list_namespaced_pod(
                    kube.namespace, label_selector="job-name=slow"
                ).items
                if p.metadata.deletion_timestamp is None
            ]
        ),
    )


def test_deleting_a_job_orphans_its_pods_unless_told_otherwise(
    kube: KubeTarget, api: client.ApiClient
) -> None:
    """As on a real server: batch/v1 Jobs default to the Orphan propagation policy."""
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    for name in ("kept", "cascaded"):
        batch.create_namespaced_job(kube.namespace, job(name, "sleep 600"))
        wait_for(
            f"pod of {name}",
            lambda n=name: (
                core.list_namespaced_pod(kube.namespace, label_selector=f"job-name={n}").items
            ),
        )
    batch.delete_namespaced_job("kept", kube.namespace)
    batch.delete_namespaced_job("cascaded", kube.namespace, propagation_policy="Background")
    wait_for(
        "the cascaded pod to go",
        lambda: (
            not core.list_namespaced_pod(kube.namespace, label_selector="job-name=cascaded").items
        ),
    )
    (orphan,) = core.list_namespaced_pod(kube.namespace, label_selector="job-name=kept").items
    assert not orphan.metadata.owner_references


# -- errors and logs ---------------------------------------------------------------------------


def test_errors_are_kubernetes_status_objects(kube: KubeTarget, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_pod_log("no-such-pod", kube.namespace)
    assert missing.value.status == 404
    assert '"kind":"Status"' in missing.value.body.replace(" ", "")
    assert '"reason":"NotFound"' in missing.value.body.replace(" ", "")
    with pytest.raises(ApiException) as mismatch:
        core.create_namespaced_config_map(
            kube.namespace, {"metadata": {"name": "x", "namespace": "elsewhere"}}
        )
    assert mismatch.value.status == 400


# -- the double itself ---------------------------------------------------------------------------


def test_double_serves_a_kubeconfig_and_stops_cleanly(tmp_path: Path) -> None:
    double = KubeApiDouble(ready_after=0.1)
    double.stop()  # safe before start
    with double:
        kubeconfig = double.write_kubeconfig(tmp_path / "kubeconfig")
        assert f"server: {double.url}" in kubeconfig.read_text()
        with kubernetes.config.new_client_from_config(config_file=str(kubeconfig)) as api:
            version = client.VersionApi(api).get_code()
            assert "test-double" in version.git_version
            client.CoreV1Api(api).create_namespaced_config_map(
                "anywhere", {"metadata": {"name": "c"}}
            )
        assert [c["metadata"]["name"] for c in double.objects("configmaps", "anywhere")] == ["c"]
        paths = [r.path for r in double.requests()]
        assert "/version" in paths and "/api/v1/namespaces/anywhere/configmaps" in paths
        assert port_listening(double.port)
    double.stop()  # idempotent
    assert wait_port_closed(double.port, timeout=5)
    assert not double.errors


def test_kube_fixture_gives_a_fresh_namespace(kube: KubeTarget, api: client.ApiClient) -> None:
    assert re.fullmatch(r"flowq-test-[0-9a-f]{6}", kube.namespace)
    namespace = client.CoreV1Api(api).read_namespace(kube.namespace)
    assert namespace.status.phase == "Active"
