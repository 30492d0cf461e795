"""The generic REST gateway (flowq.rest): routes, transcoding, errors, OpenAPI, and the wire.

The pure parts are tested directly against the real flowq.v1 descriptors (plus one small
descriptor built here, for nested path variables and map fields). The wire tests start a real
grpc.aio server on port 0 with `GatewayTestWorkflowServicer`, a fixture for the gateway
library that echoes requests and fails on cue; it is not the apiserver.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from google.api import annotations_pb2, http_pb2  # noqa: F401  (registers google.api.http)
from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from google.rpc import error_details_pb2, status_pb2
from starlette.responses import PlainTextResponse
from starlette.routing import Route as StarletteRoute

from flowq.rest import build_gateway, openapi_document
from flowq.rest.errors import HTTP_STATUS, GatewayError, rpc_error_body
from flowq.rest.routes import (
    Router,
    TemplateError,
    compile_routes,
    parse_template,
    route_from_rule,
)
from flowq.rest.transcode import build_request
from flowq.v1 import (
    queue_service_pb2,
    types_pb2,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)

WORKFLOW_SERVICE = workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"]
QUEUE_SERVICE = queue_service_pb2.DESCRIPTOR.services_by_name["QueueService"]
ROUTES = compile_routes([WORKFLOW_SERVICE])


def _request(method: str, path: str, query: str = "", body: bytes = b"", routes=ROUTES):
    match = Router(routes).match(method, path)
    return build_request(match.route, match.params, query.encode(), body)


def _gateway_error(method: str, path: str, query: str = "", body: bytes = b"", routes=ROUTES):
    with pytest.raises(GatewayError) as caught:
        _request(method, path, query, body, routes)
    return caught.value


def _violation(error: GatewayError) -> str:
    (detail,) = error.body()["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    return detail["fieldViolations"][0]["field"]


# -- routes ---------------------------------------------------------------------------------


def test_every_binding_is_a_route():
    table = {(r.http_method, r.template.text): r.operation_id for r in ROUTES}
    assert table == {
        ("PUT", "/api/v1/applications/{app_id}/workflows/{name}"): "WorkflowService_PutWorkflow",
        ("GET", "/api/v1/applications/{app_id}/workflows/{name}"): "WorkflowService_GetWorkflow",
        ("GET", "/api/v1/applications/{app_id}/workflows"): "WorkflowService_ListWorkflows",
        ("DELETE", "/api/v1/applications/{app_id}/workflows/{name}"): (
            "WorkflowService_DeleteWorkflow"
        ),
        ("POST", "/api/v1/applications/{app_id}/workflow/exec"): "WorkflowService_ExecWorkflow",
        ("POST", "/api/v1/workflow/exec"): "WorkflowService_ExecWorkflow_2",
        ("POST", "/api/v1/applications/{app_id}/workflow/cancel"): "WorkflowService_CancelTask",
        ("POST", "/api/v1/workflow/cancel"): "WorkflowService_CancelTask_2",
        ("GET", "/api/v1/tasks/{task_id}"): "WorkflowService_GetTask",
        ("GET", "/api/v1/applications/{app_id}/tasks"): "WorkflowService_ListTasks",
        ("GET", "/api/v1/tasks"): "WorkflowService_ListTasks_2",
        ("GET", "/api/v1/tasks/{task_id}:watch"): "WorkflowService_WatchTask",
    }
    assert {r.full_method for r in ROUTES if r.method.name == "GetTask"} == {
        "/flowq.v1.WorkflowService/GetTask"
    }


@pytest.mark.parametrize("order", [ROUTES, ROUTES[::-1]], ids=["declared", "reversed"])
def test_verb_route_wins_regardless_of_order(order):
    router = Router(order)
    watch = router.match("GET", "/api/v1/tasks/abc:watch")
    assert watch.route.method.name == "WatchTask"
    assert watch.params == {("task_id",): "abc"}
    get = router.match("GET", "/api/v1/tasks/abc")
    assert get.route.method.name == "GetTask"
    # An escaped colon is data, not a verb separator.
    escaped = router.match("GET", "/api/v1/tasks/abc%3Awatch")
    assert escaped.route.method.name == "GetTask"
    assert escaped.params == {("task_id",): "abc:watch"}


def test_additional_bindings_route_to_the_same_method():
    router = Router(ROUTES)
    exec_ = router.match("POST", "/api/v1/workflow/exec")
    assert (exec_.route.method.name, exec_.route.binding, exec_.params) == ("ExecWorkflow", 1, {})
    tasks = router.match("GET", "/api/v1/tasks")
    assert (tasks.route.method.name, tasks.route.binding) == ("ListTasks", 1)
    scoped = router.match("GET", "/api/v1/applications/app1/tasks")
    assert (scoped.route.binding, scoped.params) == (0, {("app_id",): "app1"})


@pytest.mark.parametrize(
    "path",
    ["/api/v1/nope", "/api/v1/tasks/", "/api/v1/tasks/a/b", "/api/v1/tasks/:watch", "/"],
)
def test_unknown_path_is_404(path):
    error = _gateway_error("GET", path)
    assert error.http_status == 404
    assert error.body()["code"] == grpc.StatusCode.NOT_FOUND.value[0]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/api/v1/tasks/abc", "GET"),
        ("POST", "/api/v1/tasks/abc:watch", "GET"),
        ("POST", "/api/v1/applications/a/workflows/n", "DELETE, GET, PUT"),
        ("GET", "/api/v1/workflow/exec", "POST"),
    ],
)
def test_wrong_method_is_405_with_allow(method, path, allow):
    error = _gateway_error(method, path)
    assert error.http_status == 405
    assert error.headers == {"Allow": allow}


def test_templates():
    template = parse_template("/v1/{shelf.name=*}/books/{id}:publish")
    assert template.verb == "publish"
    assert [v.field_path for v in template.variables] == [("shelf", "name"), ("id",)]
    assert template.match(["v1", "s%201", "books", "b"]) == {("shelf", "name"): "s 1", ("id",): "b"}
    assert template.match(["v1", "s", "books"]) is None
    multi = parse_template("/v1/{name=shelves/*}")
    assert multi.match(["v1", "shelves", "x"]) == {("name",): "shelves/x"}
    assert multi.match(["v1", "boxes", "x"]) is None
    for bad in ("v1/x", "/v1/**", "/v1/{a", "/v1/{a=**}", "/v1/x:", "/v1/{a}/{a}", "/v1//x"):
        with pytest.raises(TemplateError):
            parse_template(bad)


def test_rule_must_fit_the_request_message():
    method = WORKFLOW_SERVICE.methods_by_name["GetTask"]
    with pytest.raises(TemplateError, match="nope"):
        route_from_rule(method, http_pb2.HttpRule(get="/v1/{nope}"))
    with pytest.raises(TemplateError, match="body"):
        route_from_rule(method, http_pb2.HttpRule(post="/v1/x", body="nope"))


# -- request building -----------------------------------------------------------------------


def test_path_and_query_fill_the_request():
    request = _request(
        "GET",
        "/api/v1/applications/app%2F1/tasks",
        "status=TASK_STATUS_RUNNING&pageSize=10&workflow_name=deploy&page_token=abc",
    )
    assert request == workflow_service_pb2.ListTasksRequest(
        app_id="app/1",
        status=types_pb2.TASK_STATUS_RUNNING,
        page_size=10,
        workflow_name="deploy",
        page_token="abc",
    )
    assert _request("GET", "/api/v1/tasks", "status=3").status == types_pb2.TASK_STATUS_SUCCEEDED


def test_query_strings_are_utf8_whether_raw_or_escaped():
    # Found by schemathesis: raw non-ASCII bytes in the query made a 500.
    def request(raw: bytes):
        match = Router(ROUTES).match("GET", "/api/v1/tasks")
        return build_request(match.route, match.params, raw, b"")

    assert request("workflowName=déploi".encode()).workflow_name == "déploi"
    assert request(b"workflowName=d%C3%A9ploi").workflow_name == "déploi"
    for bad in (b"workflowName=%FF", b"workflowName=\xff"):
        with pytest.raises(GatewayError) as caught:
            request(bad)
        assert caught.value.http_status == 400 and "UTF-8" in caught.value.message


def test_repeated_and_nested_query_parameters():
    replay = QUEUE_SERVICE.methods_by_name["ReplayDeadLetters"]
    routes = [route_from_rule(replay, http_pb2.HttpRule(get="/v1/dead-letters:replay"))]
    request = _request("GET", "/v1/dead-letters:replay", "ids=a&ids=b&all=true", routes=routes)
    assert list(request.ids) == ["a", "b"] and request.all is True

    put = WORKFLOW_SERVICE.methods_by_name["PutWorkflow"]
    routes = [route_from_rule(put, http_pb2.HttpRule(get="/v1/{app_id}"))]
    request = _request(
        "GET", "/v1/app1", "workflow.mode=DAG&workflow.maxConcurrency=3&name=n", routes=routes
    )
    assert request.app_id == "app1" and request.name == "n"
    assert (request.workflow.mode, request.workflow.max_concurrency) == (types_pb2.DAG, 3)


def test_body_star_with_path_and_query():
    request = _request(
        "POST",
        "/api/v1/applications/app1/workflow/exec",
        body=b'{"workflowName": "deploy", "idempotencyKey": "k1"}',
    )
    assert request == workflow_service_pb2.ExecWorkflowRequest(
        app_id="app1", workflow_name="deploy", idempotency_key="k1"
    )
    # The same value in path and body is fine.
    same = _request("POST", "/api/v1/applications/app1/workflow/exec", body=b'{"appId": "app1"}')
    assert same.app_id == "app1"
    # The thin wrapper takes appId from the body or the query string.
    wrapper = _request("POST", "/api/v1/workflow/exec", "appId=a2", b'{"workflowName": "w"}')
    assert (wrapper.app_id, wrapper.workflow_name) == ("a2", "w")
    # An empty body is {}.
    empty = _request("POST", "/api/v1/applications/app1/workflow/cancel", body=b"")
    assert empty == workflow_service_pb2.CancelTaskRequest(app_id="app1")


def test_body_field_goes_into_that_field():
    request = _request(
        "PUT",
        "/api/v1/applications/app1/workflows/deploy",
        body=json.dumps(
            {
                "mode": "DAG",
                "steps": [{"name": "a", "type": "shell", "properties": {"command": ["true"]}}],
            }
        ).encode(),
    )
    assert (request.app_id, request.name) == ("app1", "deploy")
    assert request.workflow.mode == types_pb2.DAG
    assert request.workflow.steps[0].properties["command"][0] == "true"


@pytest.mark.parametrize(
    ("path", "query", "body", "field"),
    [
        ("/api/v1/applications/app1/workflow/exec", "", b'{"appId": "other"}', "appId"),
        ("/api/v1/workflow/exec", "appId=a", b'{"appId": "b"}', "appId"),
        ("/api/v1/workflow/exec", "appId=a&appId=b", b"", "appId"),
    ],
)
def test_conflicting_values_are_400_naming_the_field(path, query, body, field):
    error = _gateway_error("POST", path, query, body)
    assert error.http_status == 400
    assert _violation(error) == field
    assert field in error.message


def test_nested_path_variable_conflicts_with_the_body():
    put = WORKFLOW_SERVICE.methods_by_name["PutWorkflow"]
    rule = http_pb2.HttpRule(put="/v1/{workflow.app_id=*}/workflows/{name}", body="workflow")
    routes = [route_from_rule(put, rule)]
    request = _request("PUT", "/v1/app1/workflows/w", body=b'{"mode": "DAG"}', routes=routes)
    assert (request.workflow.app_id, request.name, request.workflow.mode) == (
        "app1",
        "w",
        types_pb2.DAG,
    )
    error = _gateway_error("PUT", "/v1/app1/workflows/w", body=b'{"appId": "x"}', routes=routes)
    assert _violation(error) == "workflow.appId"
    assert "'app1'" in error.message and "'x'" in error.message


@pytest.mark.parametrize(
    ("query", "field", "words"),
    [
        ("bogus=1", "bogus", "unknown query parameter"),
        ("status=NOPE", "status", "TASK_STATUS_RUNNING"),
        ("status=42", "status", "expected one of"),
        ("pageSize=ten", "pageSize", "integer"),
        ("pageSize=99999999999", "pageSize", "out of range"),
    ],
)
def test_bad_query_parameters_are_400(query, field, words):
    error = _gateway_error("GET", "/api/v1/tasks", query)
    assert error.http_status == 400
    assert _violation(error) == field
    assert words in error.message


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b'{"mode": "NOPE"}', "workflow.mode", "NOPE"),
        (b'{"maxConcurrency": "x"}', "workflow.maxConcurrency", "x"),
        (b'{"failFast": "yes"}', "workflow.failFast", "true or false"),
        (b'{"stepz": []}', "workflow.stepz", "unknown field"),
        (b'{"steps": [{"retry": {"maxAttempts": 1.5}}]}', "workflow.steps.retry.maxAttempts", ""),
    ],
)
def test_bad_body_values_are_400_naming_the_field(body, field, words):
    error = _gateway_error("PUT", "/api/v1/applications/a/workflows/w", body=body)
    assert error.http_status == 400
    assert _violation(error) == field
    assert words in error.message


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"workflowName": ', "not valid JSON"),
        (b"\xff\xfe\x00", "JSON"),
        (b'["a"]', "must be a JSON object"),
    ],
)
def test_malformed_body_is_400(body, words):
    error = _gateway_error("POST", "/api/v1/workflow/exec", body=body)
    assert error.http_status == 400
    assert error.body()["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert words in error.message


# -- errors ---------------------------------------------------------------------------------


def _status_trailer(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    return (("grpc-status-details-bin", status.SerializeToString()),)


def _bad_request_status(field: str, description: str) -> status_pb2.Status:
    status = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=description)
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return status


def test_every_grpc_code_has_an_http_status():
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    assert HTTP_STATUS[grpc.StatusCode.FAILED_PRECONDITION] == 412
    assert HTTP_STATUS[grpc.StatusCode.CANCELLED] == 499


def test_rpc_error_body_renders_status_details():
    status = _bad_request_status("workflowName", "must not be empty")
    status.details.add(type_url="type.googleapis.com/example.Unknown", value=b"\x01")
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*_status_trailer(status)),
        details="must not be empty",
    )
    assert rpc_error_body(error) == (
        400,
        {
            "code": 3,
            "message": "must not be empty",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [
                        {"field": "workflowName", "description": "must not be empty"}
                    ],
                },
                {"@type": "type.googleapis.com/example.Unknown", "value": "AQ=="},
            ],
        },
    )
    plain = grpc.aio.AioRpcError(
        grpc.StatusCode.ABORTED, grpc.aio.Metadata(), grpc.aio.Metadata(), details="fenced"
    )
    assert rpc_error_body(plain) == (409, {"code": 10, "message": "fenced", "details": []})


# -- OpenAPI --------------------------------------------------------------------------------

# A small service built here: a nested path variable, a map, int64, Duration, recursion.
_GADGET_PROTO = """
name: "flowq_rest_test/gadget.proto"
package: "flowq.resttest.v1"
dependency: "google/api/annotations.proto"
dependency: "google/protobuf/duration.proto"
message_type {
  name: "Shelf"
  field { name: "shelf_name" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
}
message_type {
  name: "Gadget"
  field { name: "labels" number: 1 label: LABEL_REPEATED type: TYPE_MESSAGE
          type_name: ".flowq.resttest.v1.Gadget.LabelsEntry" }
  field { name: "weight_grams" number: 2 label: LABEL_OPTIONAL type: TYPE_INT64 }
  field { name: "warmup" number: 3 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".google.protobuf.Duration" }
  field { name: "parts" number: 4 label: LABEL_REPEATED type: TYPE_MESSAGE
          type_name: ".flowq.resttest.v1.Gadget" }
  nested_type {
    name: "LabelsEntry"
    field { name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
    field { name: "value" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING }
    options { map_entry: true }
  }
}
message_type {
  name: "GetGadgetRequest"
  field { name: "shelf" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE
          type_name: ".flowq.resttest.v1.Shelf" }
  field { name: "id" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "verbose" number: 3 label: LABEL_OPTIONAL type: TYPE_BOOL }
}
service {
  name: "GadgetService"
  method {
    name: "GetGadget"
    input_type: ".flowq.resttest.v1.GetGadgetRequest"
    output_type: ".flowq.resttest.v1.Gadget"
    options { [google.api.http] { get: "/v1/shelves/{shelf.shelf_name}/gadgets/{id=*}" } }
  }
}
"""


def _gadget_service():
    pool = descriptor_pool.Default()
    try:
        file = pool.FindFileByName("flowq_rest_test/gadget.proto")
    except KeyError:
        file = pool.Add(text_format.Parse(_GADGET_PROTO, descriptor_pb2.FileDescriptorProto()))
    return file.services_by_name["GadgetService"]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_openapi_has_every_route_and_every_ref_resolves():
    document = openapi_document([WORKFLOW_SERVICE, _gadget_service()], version="9.9")
    assert document["openapi"].startswith("3.1")
    assert document["info"] == {"title": "flowq", "version": "9.9"}
    operations = {
        (method.upper(), path): op
        for path, item in document["paths"].items()
        for method, op in item.items()
    }
    want = {r.operation_id for r in ROUTES}
    assert {op["operationId"] for op in operations.values()} >= want
    assert ("GET", "/api/v1/tasks/{taskId}:watch") in operations
    assert ("POST", "/api/v1/workflow/exec") in operations
    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        assert ref.startswith("#/components/schemas/")
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    for op in operations.values():
        assert op["responses"]["default"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/google.rpc.Status"
        }

    watch = operations[("GET", "/api/v1/tasks/{taskId}:watch")]
    assert "application/x-ndjson" in watch["responses"]["200"]["content"]
    list_tasks = operations[("GET", "/api/v1/applications/{appId}/tasks")]
    params = {(p["in"], p["name"]) for p in list_tasks["parameters"]}
    assert params == {
        ("path", "appId"),
        ("query", "workflowName"),
        ("query", "status"),
        ("query", "pageSize"),
        ("query", "pageToken"),
    }
    put = operations[("PUT", "/api/v1/applications/{appId}/workflows/{name}")]
    body_schema = put["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema == {"$ref": "#/components/schemas/flowq.v1.Workflow"}

    # Described by the protos' own comments (protoc --include_source_info, make proto).
    for (_method, path), op in operations.items():
        if path.startswith("/api/v1/"):
            assert op["summary"] and op["description"], path
    assert operations[("GET", "/api/v1/tasks/{taskId}")]["summary"] == (
        "Read one task with its steps and events"
    )
    assert schemas["flowq.v1.StepRun"]["description"] == "The state of one step inside a task."
    assert schemas["flowq.v1.StepRun"]["properties"]["attempts"]["description"] == (
        "Attempts started so far."
    )

    task = schemas["flowq.v1.Task"]["properties"]
    assert task["epoch"]["type"] == "string" and task["epoch"]["format"] == "int64"
    assert task["createTime"] == {"type": "string", "format": "date-time"}
    assert task["steps"]["type"] == "array"
    assert "TASK_STATUS_RUNNING" in schemas["flowq.v1.TaskStatus"]["enum"]
    assert schemas["flowq.v1.Step"]["properties"]["properties"]["type"] == "object"

    gadget_op = operations[("GET", "/v1/shelves/{shelf.shelfName}/gadgets/{id}")]
    assert {(p["in"], p["name"]) for p in gadget_op["parameters"]} == {
        ("path", "shelf.shelfName"),
        ("path", "id"),
        ("query", "verbose"),
    }
    gadget = schemas["flowq.resttest.v1.Gadget"]["properties"]
    assert gadget["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert gadget["weightGrams"]["type"] == "string"
    assert gadget["warmup"]["type"] == "string"
    assert gadget["parts"]["items"] == {"$ref": "#/components/schemas/flowq.resttest.v1.Gadget"}


def test_nested_path_variable_from_a_descriptor():
    routes = compile_routes([_gadget_service()])
    request = _request("GET", "/v1/shelves/top/gadgets/g1", "verbose=true", routes=routes)
    assert (request.shelf.shelf_name, request.id, request.verbose) == ("top", "g1", True)


# -- over the wire --------------------------------------------------------------------------


class GatewayTestWorkflowServicer(workflow_service_pb2_grpc.WorkflowServiceServicer):
    """A test fixture for the generic gateway: echoes requests, fails on cue by task id."""

    def __init__(self) -> None:
        self.metadata: dict[str, str] = {}
        self.watch_started = asyncio.Event()
        self.watch_cancelled = asyncio.Event()

    def _record(self, context: grpc.aio.ServicerContext) -> None:
        self.metadata = {key: value for key, value in context.invocation_metadata() or ()}

    async def GetTask(self, request, context):
        self._record(context)
        if request.task_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "task missing not found")
        if request.task_id == "slow":
            await asyncio.Event().wait()  # until the gateway's deadline cancels the call
        step = types_pb2.StepRun(name="build", status=types_pb2.STEP_STATUS_SUCCEEDED)
        return types_pb2.Task(
            task_id=request.task_id, status=types_pb2.TASK_STATUS_RUNNING, steps=[step]
        )

    async def ExecWorkflow(self, request, context):
        self._record(context)
        if not request.workflow_name:
            status = _bad_request_status("workflowName", "workflowName must not be empty")
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                status.message,
                trailing_metadata=_status_trailer(status),
            )
        return types_pb2.Task(
            task_id="t-new",
            app_id=request.app_id,
            workflow_name=request.workflow_name,
            status=types_pb2.TASK_STATUS_QUEUED,
        )

    async def ListTasks(self, request, context):
        task = types_pb2.Task(
            app_id=request.app_id, workflow_name=request.workflow_name, status=request.status
        )
        return workflow_service_pb2.ListTasksResponse(
            tasks=[task], next_page_token=f"size-{request.page_size}"
        )

    async def WatchTask(self, request, context) -> AsyncIterator[types_pb2.Task]:
        task_id = request.task_id
        if task_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "task missing not found")
        if task_id == "breaks":
            yield types_pb2.Task(task_id=task_id, status=types_pb2.TASK_STATUS_QUEUED)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "executor went away")
        if task_id in ("forever", "silent"):
            self.watch_started.set()
            if task_id == "forever":
                yield types_pb2.Task(task_id=task_id, status=types_pb2.TASK_STATUS_RUNNING)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.watch_cancelled.set()
                raise
        for status in (
            types_pb2.TASK_STATUS_QUEUED,
            types_pb2.TASK_STATUS_RUNNING,
            types_pb2.TASK_STATUS_SUCCEEDED,
        ):
            yield types_pb2.Task(task_id=task_id, status=status)


@pytest.fixture
async def wire() -> AsyncIterator[tuple[GatewayTestWorkflowServicer, grpc.aio.Channel]]:
    servicer = GatewayTestWorkflowServicer()
    server = grpc.aio.server()
    workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, channel
    finally:
        await channel.close()
        await server.stop(None)


def _client(channel: grpc.aio.Channel, **options: Any) -> httpx.AsyncClient:
    app = build_gateway(channel, [WORKFLOW_SERVICE], **options)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


async def test_unary_success_and_metadata_forwarding(wire):
    servicer, channel = wire
    async with _client(channel) as client:
        response = await client.get(
            "/api/v1/tasks/t1",
            headers={"Authorization": "Bearer s3cret", "X-Request-Id": "req-1"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == "req-1"
    body = response.json()
    assert body["taskId"] == "t1"
    assert body["status"] == "TASK_STATUS_RUNNING"
    assert body["epoch"] == "0"  # int64 as a string, defaults included
    assert body["steps"][0]["status"] == "STEP_STATUS_SUCCEEDED"
    assert servicer.metadata["authorization"] == "Bearer s3cret"
    assert servicer.metadata["x-request-id"] == "req-1"


async def test_query_and_body_reach_the_server(wire):
    _, channel = wire
    async with _client(channel) as client:
        listed = await client.get(
            "/api/v1/applications/app1/tasks",
            params={"status": "TASK_STATUS_FAILED", "pageSize": 7},
        )
        created = await client.post("/api/v1/workflow/exec?appId=a2", json={"workflowName": "w"})
    assert listed.status_code == 200
    assert listed.json()["tasks"][0]["appId"] == "app1"
    assert listed.json()["tasks"][0]["status"] == "TASK_STATUS_FAILED"
    assert listed.json()["nextPageToken"] == "size-7"
    assert created.status_code == 200
    assert (created.json()["appId"], created.json()["workflowName"]) == ("a2", "w")


async def test_grpc_errors_map_to_http_with_details(wire):
    _, channel = wire
    async with _client(channel) as client:
        invalid = await client.post("/api/v1/applications/app1/workflow/exec", json={})
        missing = await client.get("/api/v1/tasks/missing")
    assert invalid.status_code == 400
    assert invalid.json() == {
        "code": 3,
        "message": "workflowName must not be empty",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [
                    {"field": "workflowName", "description": "workflowName must not be empty"}
                ],
            }
        ],
    }
    assert missing.status_code == 404
    assert missing.json() == {"code": 5, "message": "task missing not found", "details": []}


async def test_gateway_errors_over_the_wire(wire):
    _, channel = wire
    async with _client(channel) as client:
        bad_json = await client.post("/api/v1/workflow/exec", content=b"{nope")
        not_found = await client.get("/api/v1/nothing")
        not_allowed = await client.delete("/api/v1/tasks/t1")
    assert bad_json.status_code == 400 and bad_json.json()["code"] == 3
    assert "not valid JSON" in bad_json.json()["message"]
    assert not_found.status_code == 404 and not_found.json()["code"] == 5
    assert not_allowed.status_code == 405 and not_allowed.headers["allow"] == "GET"


async def test_body_over_the_limit_is_413(wire):
    _, channel = wire

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * 30

    async with _client(channel, max_body_bytes=64) as client:
        declared = await client.post("/api/v1/workflow/exec", content=b" " * 65)
        chunked = await client.post("/api/v1/workflow/exec", content=chunks())
        fits = await client.post("/api/v1/workflow/exec", content=b'{"workflowName": "w"}')
    for response in (declared, chunked):
        assert response.status_code == 413
        assert "64 bytes" in response.json()["message"]
    assert fits.status_code == 200


async def test_unary_deadline_is_504(wire):
    _, channel = wire
    async with _client(channel, timeout_seconds=0.2) as client:
        response = await client.get("/api/v1/tasks/slow")
    assert response.status_code == 504
    assert response.json()["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


async def test_server_stream_is_ndjson(wire):
    _, channel = wire
    async with _client(channel) as client:
        response = await client.get("/api/v1/tasks/t1:watch")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = response.text.splitlines()
    assert [json.loads(line)["status"] for line in lines] == [
        "TASK_STATUS_QUEUED",
        "TASK_STATUS_RUNNING",
        "TASK_STATUS_SUCCEEDED",
    ]


async def test_stream_errors(wire):
    _, channel = wire
    async with _client(channel) as client:
        broken = await client.get("/api/v1/tasks/breaks:watch")
        missing = await client.get("/api/v1/tasks/missing:watch")
    assert broken.status_code == 200
    first, last = (json.loads(line) for line in broken.text.splitlines())
    assert first["status"] == "TASK_STATUS_QUEUED"
    assert last == {"error": {"code": 14, "message": "executor went away", "details": []}}
    # Failing before the first message still gets its own HTTP status.
    assert missing.status_code == 404
    assert missing.json()["code"] == 5


@pytest.mark.parametrize("task_id", ["forever", "silent"])
async def test_client_disconnect_cancels_the_stream(wire, task_id):
    """Driven as raw ASGI: the client hangs up after one line ("forever") or before any."""
    servicer, channel = wire
    app = build_gateway(channel, [WORKFLOW_SERVICE])
    # "silent" sends nothing: hang up once the server is in the call.
    hang_up = servicer.watch_started if task_id == "silent" else asyncio.Event()
    sent: list[dict] = []
    requests = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict:
        if (request := next(requests, None)) is not None:
            return request
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            hang_up.set()

    path = f"/api/v1/tasks/{task_id}:watch"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "server": ("gateway", 80),
        "client": ("127.0.0.1", 1234),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    await asyncio.wait_for(servicer.watch_cancelled.wait(), timeout=10)
    if task_id == "forever":
        assert sent[0]["status"] == 200
        assert json.loads(sent[1]["body"])["status"] == "TASK_STATUS_RUNNING"
    else:
        assert sent == []


async def test_openapi_and_extra_routes(wire):
    _, channel = wire

    async def healthz(request):
        return PlainTextResponse("ok")

    async def boom(request):
        raise RuntimeError("boom")

    extra = [
        StarletteRoute("/healthz", healthz),
        StarletteRoute("/api/v1/tasks/special", healthz),
        StarletteRoute("/boom", boom),
    ]
    async with _client(channel, extra_routes=extra) as client:
        openapi = await client.get("/openapi.json")
        health = await client.get("/healthz")
        shadowed = await client.get("/api/v1/tasks/special")
        crashed = await client.get("/boom", headers={"x-request-id": "r-9"})
        openapi_post = await client.post("/openapi.json")
    assert openapi.status_code == 200
    assert "/api/v1/tasks/{taskId}:watch" in openapi.json()["paths"]
    assert health.text == "ok" and shadowed.text == "ok"
    assert crashed.status_code == 500
    assert crashed.json()["code"] == 13 and "r-9" in crashed.json()["message"]
    assert "boom" not in crashed.text
    assert openapi_post.status_code == 405 and openapi_post.json()["code"] == 12


async def test_unexpected_failure_is_a_json_500(wire):
    _, channel = wire
    async with _client(channel) as client:
        await channel.close()  # calls now fail with a non-RPC error
        response = await client.get("/api/v1/tasks/t1", headers={"x-request-id": "r-1"})
    assert response.status_code == 500
    assert response.json() == {
        "code": 13,
        "message": "internal error (request id r-1)",
        "details": [],
    }
