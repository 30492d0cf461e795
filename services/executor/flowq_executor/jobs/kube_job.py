"""`k8s-job` steps: a batch/v1 Job run to completion.

The Job's name is derived from the task, the step and the attempt, so a resumed step finds
the Job its lost owner started and waits for it instead of starting a second one. The Job
has `backoffLimit: 0` (flowq's own retry decides about another attempt) and
`activeDeadlineSeconds` equal to the step's timeout. A failure names the container's exit
code or the pod's reason; the output is the tail of the pod's log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from kubernetes.dynamic.exceptions import ConflictError

from flowq_executor.jobs.base import StepContext, StepFailedError
from flowq_executor.kube import readiness
from flowq_executor.kube.client import KubeClient, KubeError
from flowq_executor.kube.render import CREATED_BY, created_by, dns_name, owner_labels

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
LOG_TAIL_LINES = 100
KEEP_FINISHED_SECONDS = 24 * 3600


def job_name(task_id: str, step: str, attempt: int) -> str:
    digest = hashlib.sha256(f"{task_id}/{step}".encode()).hexdigest()[:8]
    return f"{dns_name(step, 40)}-{digest}-{attempt}"


class KubeJobJob:
    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.namespace: str | None = ctx.properties.get("namespace")
        self.name = job_name(ctx.task_id, ctx.step, ctx.attempt)
        self.owned = False  # True once this step created or adopted the Job
        self.waiting_for = ""

    @property
    def kube(self) -> KubeClient:
        if self.ctx.kube is None:
            raise StepFailedError("this executor has no Kubernetes client configured")
        return self.ctx.kube

    def manifest(self) -> dict:
        props, ctx = self.ctx.properties, self.ctx
        labels = owner_labels(ctx.app_id, ctx.workflow, ctx.task_id, ctx.step)
        container: dict = {"name": "step", "image": props["image"]}
        for key in ("command", "args"):
            if props.get(key):
                container[key] = [str(v) for v in props[key]]
        if props.get("env"):
            container["env"] = [{"name": str(k), "value": str(v)} for k, v in props["env"].items()]
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {CREATED_BY: f"{ctx.task_id}/{ctx.step}"},
            },
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": max(1, int(ctx.timeout_seconds)),
                "ttlSecondsAfterFinished": KEEP_FINISHED_SECONDS,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"restartPolicy": "Never", "containers": [container]},
                },
            },
        }

    async def run(self) -> str:
        try:
            await self._start()
            return await self._wait()
        except KubeError as exc:
            raise StepFailedError(exc.message) from None

    async def _start(self) -> None:
        if self.ctx.adopt_attempt:
            previous = job_name(self.ctx.task_id, self.ctx.step, self.ctx.adopt_attempt)
            if await self.kube.get("batch/v1", "Job", previous, self.namespace) is not None:
                self.name, self.owned = previous, True
                log.info("adopted the Job of the lost attempt", extra={"job": previous})
                return
        self.owned = True  # before the call: a cancel during it must still delete the Job
        try:
            await self.kube.create(self.manifest(), self.namespace)
        except ConflictError:
            log.info("the Job exists already; adopting it", extra={"job": self.name})

    async def _wait(self) -> str:
        while True:
            job = await self.kube.get("batch/v1", "Job", self.name, self.namespace)
            if job is None:
                raise StepFailedError(f"Job {self.name} disappeared (deleted by someone else?)")
            state = await readiness.job_state(self.kube, job, self.namespace)
            if state.ready:
                return await self._logs()
            if state.failure:
                raise StepFailedError(state.failure, await self._logs())
            self.waiting_for = state.waiting_for
            await asyncio.sleep(POLL_SECONDS)

    async def _logs(self) -> str:
        pods = await self.kube.list("v1", "Pod", self.namespace, f"job-name={self.name}")
        if not pods:
            return ""
        pods.sort(key=lambda p: p.get("metadata", {}).get("creationTimestamp") or "")
        pod = pods[-1]["metadata"]["name"]
        namespace = (
            pods[-1]["metadata"].get("namespace") or self.namespace or self.kube.default_namespace
        )
        return await self.kube.pod_log(namespace, pod, LOG_TAIL_LINES)

    async def clean_abandoned(self) -> list[str]:
        """For a task whose owner was lost: delete the Job of this step's last attempt."""
        job = await self.kube.get("batch/v1", "Job", self.name, self.namespace)
        if created_by(job) == f"{self.ctx.task_id}/{self.ctx.step}" and await self.kube.delete(
            "batch/v1", "Job", self.name, self.namespace
        ):
            return [f"Job/{self.name}"]
        return []

    async def clean(self) -> None:
        """Delete the Job and its pods when this step started or adopted it."""
        if self.owned:
            await self.kube.delete("batch/v1", "Job", self.name, self.namespace)
            self.owned = False
