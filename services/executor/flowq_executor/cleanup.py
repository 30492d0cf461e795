"""Cleaning up after a task that ended without its owner (the dispatcher asks, through
`ExecutorService.CleanTask`): the Kubernetes objects its unfinished steps created.

A live owner cleans its own steps on failure, timeout and cancel. When the owner is lost and
the sweep ends the task (workflow timeout, too many lost owners), nobody holds those jobs any
more; any executor can find what each unfinished step created, since every object carries
its creator in the `flowq.dev/created-by` annotation and Job names derive from the task,
step and attempt.
"""

from __future__ import annotations

import logging

from google.protobuf import json_format

from flowq import status
from flowq.db import Database
from flowq.errors import FailedPreconditionError, NotFoundError, UnavailableError
from flowq.log import log_context
from flowq.steptypes import KUBE_STEP_TYPES, plain_properties
from flowq.v1 import types_pb2
from flowq_executor import repository
from flowq_executor.jobs import StepContext, make_job
from flowq_executor.kube.client import KubeClient, KubeError

log = logging.getLogger(__name__)


async def clean_task(db: Database, kube: KubeClient, task_id: str) -> list[str]:
    """Delete what the task's unfinished Kubernetes steps created; `<step>: <Kind>/<name>` each."""
    async with db.session() as session:
        ended = await repository.load_for_clean(session, task_id)
    if ended is None:
        raise NotFoundError(f"task {task_id!r} not found")
    if ended.status not in status.TERMINAL_TASK_STATUSES:
        raise FailedPreconditionError(
            f"task {task_id} has not ended ({ended.status}); its owner cleans up after it"
        )
    workflow = json_format.ParseDict(ended.spec, types_pb2.Workflow(), ignore_unknown_fields=True)
    deleted: list[str] = []
    with log_context(task_id=task_id):
        for step in workflow.steps:
            step_status, attempts = ended.steps.get(step.name, ("", 0))
            if step.type not in KUBE_STEP_TYPES or not attempts or step_status == status.SUCCEEDED:
                continue
            ctx = StepContext(
                task_id,
                ended.app_id,
                ended.workflow_name,
                step.name,
                attempts,
                plain_properties(step.properties),
                allow_shell=False,
                kube=kube,
            )
            try:
                gone = await make_job(step.type, ctx).clean_abandoned()  # type: ignore[attr-defined]
            except KubeError as exc:
                raise UnavailableError(
                    f"cannot clean up after step {step.name!r} of task {task_id}: {exc.message}"
                ) from None
            deleted += [f"{step.name}: {what}" for what in gone]
        log.info("cleaned up after an abandoned task", extra={"deleted": deleted})
    return deleted
