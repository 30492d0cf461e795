"""Validation of workflow documents and identifiers: every problem names its field."""

from __future__ import annotations

import re

from flowq.errors import InvalidArgumentError
from flowq.steptypes import STEP_TYPES, plain_properties
from flowq.v1 import types_pb2

NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,126}[A-Za-z0-9])?$")
NAME_RULE = "1-128 letters, digits, '.', '_' or '-', starting and ending with a letter or digit"
MAX_STEPS = 500


def check_name(field: str, value: str) -> str:
    if not value:
        raise InvalidArgumentError(f"{field} is required", field=field)
    if not NAME_RE.match(value):
        raise InvalidArgumentError(f"{field} {value!r} is not valid: use {NAME_RULE}", field=field)
    return value


def check_workflow(workflow: types_pb2.Workflow, *, shell_allowed: bool) -> None:
    """Raise InvalidArgumentError for the first problem in `workflow`, naming the field."""
    if workflow.mode == types_pb2.WORKFLOW_MODE_UNSPECIFIED:
        workflow.mode = types_pb2.STEP_BY_STEP
    for field in ("max_concurrency", "timeout_seconds"):
        if getattr(workflow, field) < 0:
            raise InvalidArgumentError(f"{field} must not be negative", field=f"workflow.{field}")
    if not workflow.steps:
        raise InvalidArgumentError("a workflow needs at least one step", field="workflow.steps")
    if len(workflow.steps) > MAX_STEPS:
        raise InvalidArgumentError(
            f"a workflow has at most {MAX_STEPS} steps", field="workflow.steps"
        )
    seen: set[str] = set()
    for i, step in enumerate(workflow.steps):
        where = f"workflow.steps[{i}]"
        check_name(f"{where}.name", step.name)
        if step.name in seen:
            raise InvalidArgumentError(
                f"step name {step.name!r} is used twice", field=f"{where}.name"
            )
        seen.add(step.name)
        step_type = STEP_TYPES.get(step.type)
        if step_type is None:
            known = ", ".join(sorted(STEP_TYPES))
            raise InvalidArgumentError(
                f"step {step.name!r}: unknown type {step.type!r}; this server runs: {known}",
                field=f"{where}.type",
            )
        if step_type.needs_shell and not shell_allowed:
            raise InvalidArgumentError(
                f"step {step.name!r}: shell steps are disabled on this server "
                "(set FLOWQ_EXECUTOR_ALLOW_SHELL=true on the apiserver and executors to allow them)",
                field=f"{where}.type",
            )
        props = plain_properties(step.properties)
        for prop, problem in step_type.problems(props):
            raise InvalidArgumentError(
                f"step {step.name!r}: {prop} {problem}", field=f"{where}.properties.{prop}"
            )
        if step.timeout_seconds < 0:
            raise InvalidArgumentError(
                f"step {step.name!r}: timeoutSeconds must not be negative",
                field=f"{where}.timeout_seconds",
            )
        if step.retry.max_attempts < 0 or step.retry.backoff_seconds < 0:
            raise InvalidArgumentError(
                f"step {step.name!r}: retry numbers must not be negative", field=f"{where}.retry"
            )
        if step.depends_on and workflow.mode != types_pb2.DAG:
            raise InvalidArgumentError(
                f"step {step.name!r}: dependsOn is only allowed in DAG mode (use priority in STEP_BY_STEP)",
                field=f"{where}.depends_on",
            )
    if workflow.mode == types_pb2.DAG:
        _check_graph(workflow)


def _check_graph(workflow: types_pb2.Workflow) -> None:
    names = {step.name: i for i, step in enumerate(workflow.steps)}
    for i, step in enumerate(workflow.steps):
        for dep in step.depends_on:
            if dep not in names:
                raise InvalidArgumentError(
                    f"step {step.name!r} depends on unknown step {dep!r}",
                    field=f"workflow.steps[{i}].depends_on",
                )
            if dep == step.name:
                raise InvalidArgumentError(
                    f"step {step.name!r} depends on itself", field=f"workflow.steps[{i}].depends_on"
                )
    # Kahn's algorithm: whatever is left has a cycle.
    deps = {step.name: set(step.depends_on) for step in workflow.steps}
    done: set[str] = set()
    while True:
        free = [name for name, d in deps.items() if name not in done and d <= done]
        if not free:
            break
        done.update(free)
    left = sorted(set(deps) - done, key=names.__getitem__)
    if left:
        raise InvalidArgumentError(
            f"dependsOn has a cycle among steps {', '.join(left)}",
            field=f"workflow.steps[{names[left[0]]}].depends_on",
        )
