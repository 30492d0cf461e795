"""Every workflow validation rule answers 400 over REST and INVALID_ARGUMENT over gRPC, with
a message naming the step and the problem, and the field in the BadRequest details."""

from __future__ import annotations

import grpc
import httpx
import pytest
from google.protobuf import json_format

from flowq.v1 import types_pb2
from flowq.v1 import workflow_service_pb2 as pb
from flowq.v1 import workflow_service_pb2_grpc as pb_grpc
from tests.support.stack import Stack


def step(name: str, type_: str = "sleep", **extra) -> dict:
    props = extra.pop("properties", {"seconds": 0} if type_ == "sleep" else {})
    return {"name": name, "type": type_, "properties": props, **extra}


DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}

#: (case id, workflow document, text the message must hold, field named in the details)
CASES = [
    (
        "unknown-type",
        {"steps": [step("a", "teleport")]},
        "unknown type 'teleport'",
        "workflow.steps[0].type",
    ),
    (
        "missing-property",
        {"steps": [step("a", "webservice")]},
        "step 'a': image required",
        "workflow.steps[0].properties.image",
    ),
    (
        "ill-typed-property",
        {"steps": [step("a", "webservice", properties={"image": "nginx", "replicas": "two"})]},
        "replicas must be a whole number",
        "workflow.steps[0].properties.replicas",
    ),
    (
        "unknown-property",
        {"steps": [step("a", "config", properties={"data": {}, "colour": "red"})]},
        "colour unknown property for a config step",
        "workflow.steps[0].properties.colour",
    ),
    (
        "bad-port",
        {"steps": [step("a", "webservice", properties={"image": "nginx", "ports": [80, 70000]})]},
        "ports must be a list of port numbers",
        "workflow.steps[0].properties.ports",
    ),
    (
        "manifest-without-name",
        {
            "steps": [
                step(
                    "a",
                    "apply",
                    properties={"manifests": [{"apiVersion": "v1", "kind": "ConfigMap"}]},
                )
            ]
        },
        "needs metadata.name",
        "workflow.steps[0].properties.manifests",
    ),
    (
        "manifest-bad-yaml",
        {"steps": [step("a", "apply", properties={"manifests": "kind: [unclosed"})]},
        "is not valid YAML",
        "workflow.steps[0].properties.manifests",
    ),
    (
        "bad-storage-size",
        {"steps": [step("a", "store", properties={"image": "pg", "storage": {"size": "lots"}})]},
        "size must be a quantity",
        "workflow.steps[0].properties.storage",
    ),
    (
        "bad-namespace",
        {"steps": [step("a", "k8s-job", properties={"image": "busybox", "namespace": "Prod_1"})]},
        "namespace must be a Kubernetes name",
        "workflow.steps[0].properties.namespace",
    ),
    (
        "duplicate-names",
        {"steps": [step("a"), step("a")]},
        "step name 'a' is used twice",
        "workflow.steps[1].name",
    ),
    (
        "unknown-depends-on",
        {"mode": "DAG", "steps": [step("a", dependsOn=["ghost"])]},
        "depends on unknown step 'ghost'",
        "workflow.steps[0].depends_on",
    ),
    (
        "cycle",
        {
            "mode": "DAG",
            "steps": [step("a", dependsOn=["b"]), step("b", dependsOn=["a"]), step("c")],
        },
        "dependsOn has a cycle among steps a, b",
        "workflow.steps[0].depends_on",
    ),
    (
        "depends-on-in-step-by-step",
        {"steps": [step("a"), step("b", dependsOn=["a"])]},
        "dependsOn is only allowed in DAG mode",
        "workflow.steps[1].depends_on",
    ),
    (
        "negative-timeout",
        {"steps": [step("a", timeoutSeconds=-1)]},
        "timeoutSeconds must not be negative",
        "workflow.steps[0].timeout_seconds",
    ),
    (
        "negative-retry",
        {"steps": [step("a", retry={"maxAttempts": -2})]},
        "retry numbers must not be negative",
        "workflow.steps[0].retry",
    ),
    (
        "negative-concurrency",
        {"maxConcurrency": -1, "steps": [step("a")]},
        "max_concurrency must not be negative",
        "workflow.max_concurrency",
    ),
    ("no-steps", {"steps": []}, "at least one step", "workflow.steps"),
]


@pytest.fixture(scope="module")
def api(request, tmp_path_factory, redis_server_url) -> Stack:
    """One apiserver for every case (validation needs nothing else)."""
    from tests.support.procs import ProcessGroup
    from tests.support.rediskeys import delete_prefixed_keys, new_key_prefix

    procs = ProcessGroup(tmp_path_factory.mktemp("validation"))
    prefix = new_key_prefix()
    db = f"sqlite:///{tmp_path_factory.mktemp('db') / 'flowq.db'}"
    stack = Stack(procs, db, redis_server_url, prefix).start("apiserver")
    yield stack
    assert not procs.close()
    delete_prefixed_keys(redis_server_url, prefix)


@pytest.mark.parametrize(
    ("doc", "says", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_invalid_workflows_are_refused_over_rest_and_grpc(
    api: Stack, doc: dict, says: str, field: str
) -> None:
    reply = httpx.put(
        f"{api.base_url}/api/v1/applications/demo/workflows/bad", json=doc, timeout=30
    )
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert says in body["message"], body["message"]
    violations = body["details"][0]["fieldViolations"]
    assert violations[0]["field"] == field, violations

    workflow = json_format.ParseDict(doc, types_pb2.Workflow())
    with grpc.insecure_channel(api.target()) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.WorkflowServiceStub(channel).PutWorkflow(
                pb.PutWorkflowRequest(app_id="demo", name="bad", workflow=workflow), timeout=30
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in err.value.details(), err.value.details()
    assert httpx.get(f"{api.base_url}/api/v1/applications/demo/workflows/bad").status_code == 404
