"""Kubernetes step runners on real processes, through the official client over real HTTP.

The cluster is the Kubernetes API test double (`tests/support/kube_double`), or a real
cluster when FLOWQ_TEST_KUBECONFIG points at one (see docs/operations.md). The tests look at
the cluster only through the real `kubernetes` client, so both work the same.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from flowq.client import load_workflows
from flowq.v1 import types_pb2
from tests.support.flows import eventually
from tests.support.kube_double import KubeTarget
from tests.support.stack import Stack

S = types_pb2
NEVER_PULLS = "registry.invalid/flowq/web:1"  # no such registry: a real cluster cannot pull it


def kube_stack(procs, database_url, redis_url, key_prefix, kube: KubeTarget, **kw) -> Stack:
    env = {
        "FLOWQ_KUBECONFIG": str(kube.kubeconfig),
        "FLOWQ_KUBE_NAMESPACE": kube.namespace,
        **kw.pop("extra_env", {}),
    }
    return Stack(procs, database_url, redis_url, key_prefix, extra_env=env, **kw).start()


@pytest.fixture
def stack(procs, sqlite_database_url, redis_server_url, key_prefix, kube) -> Stack:
    return kube_stack(procs, sqlite_database_url, redis_server_url, key_prefix, kube)


def run(stack: Stack, name: str, doc: dict, timeout: float = 90) -> types_pb2.Task:
    stack.put_workflow(name, doc)
    with stack.client() as flowq:
        return flowq.wait(flowq.exec_workflow("demo", name).task_id, timeout=timeout)


def steps_of(task: types_pb2.Task) -> dict[str, types_pb2.StepRun]:
    return {s.name: s for s in task.steps}


def deployment(name: str, image: str, **pod_spec) -> dict:
    """A one-container Deployment manifest selecting `app: <name>`."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {**pod_spec, "containers": [{"name": "web", "image": image}]},
            },
        },
    }


def job_workflow(step: str, script: str, **workflow) -> dict:
    """A workflow of one k8s-job step running `sh -c script` in busybox."""
    props = {"image": "busybox:1.36", "command": ["sh", "-c", script]}
    return {**workflow, "steps": [{"name": step, "type": "k8s-job", "properties": props}]}


def jobs_of(kube: KubeTarget, api: k8s.ApiClient, task_id: str) -> list:
    """The Jobs labelled with `task_id` in the test's namespace."""
    selector = f"flowq.dev/task={task_id}"
    return k8s.BatchV1Api(api).list_namespaced_job(kube.namespace, label_selector=selector).items


def exists(read, *args) -> bool:
    try:
        read(*args)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


DELIVERY = {
    "mode": "STEP_BY_STEP",
    "steps": [
        {
            "name": "settings",
            "type": "config",
            "priority": 0,
            "properties": {"data": {"LOG_LEVEL": "info"}},
        },
        {
            "name": "credentials",
            "type": "secret",
            "priority": 0,
            "properties": {"data": {"PASSWORD": "s3cret"}},
        },
        {
            "name": "db",
            "type": "store",
            "priority": 1,
            "properties": {"image": "postgres:16", "ports": [5432], "storage": {"size": "1Gi"}},
        },
        {
            "name": "web",
            "type": "webservice",
            "priority": 2,
            "properties": {
                "image": "nginx:1.27",
                "replicas": 2,
                "ports": [80],
                "env": {"DB_HOST": "db"},
            },
        },
    ],
}


def test_an_application_is_delivered_config_secret_store_then_webservice(
    stack: Stack, kube: KubeTarget
) -> None:
    task = run(stack, "deliver", DELIVERY)
    assert task.status == S.TASK_STATUS_SUCCEEDED, task
    steps = steps_of(task)
    assert "Deployment/web ready" in steps["web"].output
    assert "StatefulSet/db ready" in steps["db"].output
    with kube.api() as api:
        core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
        ns = kube.namespace
        deployment = apps.read_namespaced_deployment("web", ns)
        assert deployment.spec.replicas == 2
        assert deployment.status.available_replicas == 2
        labels = deployment.metadata.labels
        assert labels["app.kubernetes.io/managed-by"] == "flowq"
        assert labels["flowq.dev/app"] == "demo" and labels["flowq.dev/task"] == task.task_id
        assert labels["flowq.dev/step"] == "web" and labels["flowq.dev/workflow"] == "deliver"
        container = deployment.spec.template.spec.containers[0]
        assert container.image == "nginx:1.27" and container.env[0].name == "DB_HOST"
        assert [p.port for p in core.read_namespaced_service("web", ns).spec.ports] == [80]
        assert core.read_namespaced_service("db", ns).spec.cluster_ip == "None"
        assert apps.read_namespaced_stateful_set("db", ns).status.ready_replicas == 1
        assert core.read_namespaced_config_map("settings", ns).data == {"LOG_LEVEL": "info"}
        assert "PASSWORD" in core.read_namespaced_secret("credentials", ns).data
    # Running it again updates the same objects in place; nothing is created twice.
    again = run(stack, "deliver", DELIVERY)
    assert again.status == S.TASK_STATUS_SUCCEEDED, again
    assert "Deployment/web configured" in steps_of(again)["web"].output


def test_a_never_ready_image_fails_naming_the_cause_and_clean_removes_only_its_own_objects(
    stack: Stack, kube: KubeTarget
) -> None:
    doc = {
        "steps": [
            {"name": "shared", "type": "config", "properties": {"data": {"A": "1"}}},
            {
                "name": "rollout",
                "type": "apply",
                "timeoutSeconds": 60,
                "properties": {
                    "manifests": [
                        # exists already (the previous step made it): updated, never deleted
                        {
                            "apiVersion": "v1",
                            "kind": "ConfigMap",
                            "metadata": {"name": "shared"},
                            "data": {"A": "2"},
                        },
                        {
                            "apiVersion": "v1",
                            "kind": "ConfigMap",
                            "metadata": {"name": "rollout-extra"},
                            "data": {},
                        },
                        deployment("broken", NEVER_PULLS),
                    ]
                },
            },
        ]
    }
    task = run(stack, "broken", doc)
    assert task.status == S.TASK_STATUS_FAILED and task.reason == "step-failed", task
    step = steps_of(task)["rollout"]
    assert "ImagePullBackOff" in step.message and "Deployment broken" in step.message, step.message
    with kube.api() as api:
        core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
        ns = kube.namespace
        eventually(lambda: not exists(apps.read_namespaced_deployment, "broken", ns), 30)
        assert not exists(core.read_namespaced_config_map, "rollout-extra", ns)
        assert core.read_namespaced_config_map("shared", ns).data == {"A": "2"}  # updated, kept


def test_rollout_causes_are_named_a_crash_loop_at_once_an_unschedulable_pod_at_the_timeout(
    stack: Stack,
) -> None:
    unschedulable = deployment(
        "nowhere", "nginx:1.27", nodeSelector={"flowq.dev/no-such-node": "true"}
    )
    doc = {
        "mode": "DAG",
        "steps": [
            {
                "name": "deploy",
                "type": "apply",
                "timeoutSeconds": 4,
                "properties": {"manifests": [unschedulable]},
            },
            {
                "name": "crashing",
                "type": "webservice",
                "properties": {
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", "echo starting; exit 2"],
                },
            },
        ],
    }
    task = run(stack, "stuck", doc)
    assert task.status == S.TASK_STATUS_FAILED, task
    steps = steps_of(task)
    message = steps["deploy"].message
    assert message.startswith("timeout:") and "still waiting for Deployment nowhere" in message
    assert "Unschedulable" in message, message
    crash = steps["crashing"].message
    assert "CrashLoopBackOff" in crash and "last exit code 2" in crash, crash
    assert steps["crashing"].finish_time.ToDatetime() < steps["deploy"].finish_time.ToDatetime()


def test_k8s_job_runs_to_completion_or_fails_with_the_exit_code_and_its_log(
    stack: Stack, kube: KubeTarget
) -> None:
    doc = {
        "mode": "DAG",
        "steps": [
            {
                "name": "migrate",
                "type": "k8s-job",
                "properties": {
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", "echo migrating schema"],
                },
            },
            {
                "name": "smoke",
                "type": "k8s-job",
                "properties": {
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", "echo smoke failed; exit 3"],
                },
            },
        ],
    }
    task = run(stack, "jobs", doc)
    steps = steps_of(task)
    assert steps["migrate"].status == S.STEP_STATUS_SUCCEEDED, steps["migrate"]
    assert "migrating schema" in steps["migrate"].output
    assert steps["smoke"].status == S.STEP_STATUS_FAILED
    assert "exited with code 3" in steps["smoke"].message, steps["smoke"].message
    assert "smoke failed" in steps["smoke"].output
    with kube.api() as api:
        jobs = jobs_of(kube, api, task.task_id)
    names = {j.metadata.labels["flowq.dev/step"]: j for j in jobs}
    assert set(names) == {"migrate"}  # the failed step's Job was cleaned
    job = names["migrate"]
    assert job.spec.backoff_limit == 0 and job.spec.active_deadline_seconds == 1200
    assert job.metadata.name.endswith("-1")  # attempt 1


FAST_LEASE = {
    "FLOWQ_LEASE_TTL_SECONDS": "3",
    "FLOWQ_HEARTBEAT_SECONDS": "1",
    "FLOWQ_SWEEP_INTERVAL_SECONDS": "1",
}


def test_a_resumed_k8s_job_step_adopts_the_job_its_lost_owner_started(
    procs, sqlite_database_url, redis_server_url, key_prefix, kube: KubeTarget
) -> None:
    stack = kube_stack(
        procs,
        sqlite_database_url,
        redis_server_url,
        key_prefix,
        kube,
        extra_env=FAST_LEASE,
        executors=2,
    )
    doc = job_workflow("backfill", "echo backfilled; sleep 8")
    stack.put_workflow("backfill", doc)
    with stack.client() as flowq, kube.api() as api:
        task_id = flowq.exec_workflow("demo", "backfill").task_id
        eventually(lambda: jobs_of(kube, api, task_id), 30)
        _, owner = stack.owner_process(flowq.get_task(task_id).owner_id)
        owner.kill()
        killed = time.monotonic()
        done = flowq.wait(task_id, timeout=60)
        took = time.monotonic() - killed
        jobs = jobs_of(kube, api, task_id)
    assert done.status == S.TASK_STATUS_SUCCEEDED, done
    step = done.steps[0]
    assert step.attempts == 2 and "backfilled" in step.output
    assert [j.metadata.name for j in jobs] == [jobs[0].metadata.name]  # one Job: adopted
    assert jobs[0].metadata.name.endswith("-1")  # the one attempt 1 started
    assert took < 30, took


def test_cancel_deletes_the_running_job(stack: Stack, kube: KubeTarget) -> None:
    doc = job_workflow("long", "sleep 300")
    stack.put_workflow("long", doc)
    with stack.client() as flowq, kube.api() as api:
        task_id = flowq.exec_workflow("demo", "long").task_id
        eventually(lambda: jobs_of(kube, api, task_id), 30)
        flowq.cancel_task("demo", task_id, reason="not today")
        done = flowq.wait(task_id, timeout=30)
        assert done.status == S.TASK_STATUS_CANCELLED
        assert done.steps[0].status == S.STEP_STATUS_CANCELLED
        eventually(lambda: not jobs_of(kube, api, task_id), 30)


def test_the_delivery_example_runs_as_written(stack: Stack, kube: KubeTarget) -> None:
    """examples/delivery.yaml, with its namespace pointed at the test's own."""
    text = (Path(__file__).parent.parent / "examples" / "delivery.yaml").read_text()
    (workflow,) = load_workflows(
        text.replace("shop", kube.namespace).replace(f"appId: {kube.namespace}", "appId: shop")
    )
    with stack.client() as flowq:
        flowq.put_workflow(workflow)
        task = flowq.wait(flowq.exec_workflow("shop", "deliver").task_id, timeout=120)
    assert task.status == S.TASK_STATUS_SUCCEEDED, task
    order = sorted(task.steps, key=lambda s: s.start_time.ToDatetime())
    assert [s.name for s in order][:1] == ["namespace"] and order[-1].name == "smoke"
    assert "Namespace/" in steps_of(task)["namespace"].output  # it existed: configured, never owned
    with kube.api() as api:
        assert (
            k8s.AppsV1Api(api).read_namespaced_deployment("web", kube.namespace).spec.replicas == 2
        )


def test_an_abandoned_task_past_its_timeout_has_its_job_deleted_by_another_executor(
    procs, sqlite_database_url, redis_server_url, key_prefix, kube: KubeTarget
) -> None:
    """The owner dies; nobody runs the task again before its workflow timeout, so the sweep
    fails it. The dispatcher then asks an executor to clean: until one is up the call fails
    and is retried; then the Job the dead owner started is deleted."""
    stack = kube_stack(
        procs, sqlite_database_url, redis_server_url, key_prefix, kube, extra_env=FAST_LEASE
    )
    doc = job_workflow("forever", "sleep 600", timeoutSeconds=6)
    stack.put_workflow("abandoned", doc)
    with stack.client() as flowq, kube.api() as api:
        task_id = flowq.exec_workflow("demo", "abandoned").task_id
        listed = lambda: jobs_of(kube, api, task_id)  # noqa: E731
        eventually(listed, 30)
        stack.processes["executor"].kill()
        task = flowq.wait(task_id, timeout=30)
        assert task.status == S.TASK_STATUS_FAILED and task.reason == "timeout", task
        assert listed(), "nobody may delete the Job before an executor is asked to"
        stack.start("executor")
        eventually(lambda: not listed(), 60, "the abandoned Job deleted")
        cleaned = eventually(
            lambda: [e for e in flowq.get_task(task_id).events if e.type == "cleaned"], 30
        )
    assert "forever: Job/" in cleaned[0].message, cleaned[0].message
    counted = 'flowq_tasks_cleaned_total{outcome="cleaned"} 1.0'
    eventually(lambda: counted in stack.metrics("dispatcher"), 10, "the clean counted")


def test_an_unreachable_api_server_fails_the_step_saying_so(
    procs, sqlite_database_url, redis_server_url, key_prefix, tmp_path
) -> None:
    """docs/operations.md: `the Kubernetes API server at ... did not answer`; the step fails
    and its retry decides what happens next (here: one retry, then the task fails)."""
    kubeconfig = tmp_path / "nowhere.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "gone", "cluster": {"server": "http://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "c", "context": {"cluster": "gone", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    env = {"FLOWQ_KUBECONFIG": str(kubeconfig)}
    stack = Stack(procs, sqlite_database_url, redis_server_url, key_prefix, extra_env=env).start()
    doc = {
        "steps": [
            {
                "name": "settings",
                "type": "config",
                "retry": {"maxAttempts": 2, "backoffSeconds": 0.1},
                "properties": {"data": {"A": "1"}},
            }
        ]
    }
    task = run(stack, "unreachable", doc, timeout=120)
    step = steps_of(task)["settings"]
    assert task.status == S.TASK_STATUS_FAILED and task.reason == "step-failed", task
    assert step.attempts == 2
    assert "Kubernetes API server at http://127.0.0.1:1 did not answer" in step.message, (
        step.message
    )
