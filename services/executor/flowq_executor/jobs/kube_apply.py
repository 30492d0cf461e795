"""`apply` and the component types (`webservice`, `store`, `config`, `secret`): server-side
apply of Kubernetes objects, then wait until each is ready.

Objects get flowq's labels. An object this step creates is annotated with its task and step
(`flowq.dev/created-by`), and only such objects are deleted by `clean()`: an object that
existed before (created by an earlier step, task or person) is updated, never removed. A
resumed step finds its own objects by that annotation and adopts them.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import yaml

from flowq_executor.jobs.base import OutputTail, StepContext, StepFailedError
from flowq_executor.kube import readiness
from flowq_executor.kube.client import KubeClient, KubeError
from flowq_executor.kube.render import CREATED_BY, created_by, owner_labels, render

POLL_SECONDS = 1.0

Ref = tuple[str, str, str, str | None]  # apiVersion, kind, name, namespace


def manifests_of(value: Any) -> list[dict]:
    """`manifests` as a list of objects: a list, or a YAML string of one or more documents."""
    if isinstance(value, str):
        return [doc for doc in yaml.safe_load_all(value) if doc]
    return list(value)


class ApplyJob:
    def __init__(self, ctx: StepContext, objects: list[dict] | None = None) -> None:
        self.ctx = ctx
        self.namespace: str | None = ctx.properties.get("namespace")
        self.objects = objects if objects is not None else manifests_of(ctx.properties["manifests"])
        self.created: list[Ref] = []
        self.waiting_for = ""
        self.tail = OutputTail()

    @property
    def kube(self) -> KubeClient:
        if self.ctx.kube is None:
            raise StepFailedError("this executor has no Kubernetes client configured")
        return self.ctx.kube

    async def run(self) -> str:
        try:
            refs = [await self._apply(obj) for obj in self.objects]
            await self._wait(refs)
        except KubeError as exc:
            raise StepFailedError(exc.message, self.tail.text()) from None
        return self.tail.text()

    async def _apply(self, original: dict) -> Ref:
        obj = copy.deepcopy(original)
        meta = obj.setdefault("metadata", {})
        namespace = meta.pop("namespace", None) or self.namespace
        kind, name, api_version = obj["kind"], meta["name"], obj["apiVersion"]
        meta["labels"] = {
            **(meta.get("labels") or {}),
            **owner_labels(self.ctx.app_id, self.ctx.workflow, self.ctx.task_id, self.ctx.step),
        }
        mine = f"{self.ctx.task_id}/{self.ctx.step}"
        existing = await self.kube.get(api_version, kind, name, namespace)
        creator = created_by(existing)
        # Keep the annotation as it is: a server-side apply that left it out would remove it.
        annotations = {**(meta.get("annotations") or {})}
        if existing is None or creator == mine:
            annotations[CREATED_BY] = mine
        elif creator:
            annotations[CREATED_BY] = creator
        if annotations:
            meta["annotations"] = annotations
        ref: Ref = (api_version, kind, name, namespace)
        if existing is None or creator == mine:
            self.created.append(ref)  # before the call: a cancel during it must still delete it
        await self.kube.apply(obj, namespace)
        verb = "created" if existing is None else ("adopted" if creator == mine else "configured")
        self.tail.write(f"{kind}/{name} {verb}\n")
        return ref

    async def _wait(self, refs: list[Ref]) -> None:
        pending = list(refs)
        while pending:
            for ref in list(pending):
                state = await readiness.check(self.kube, *ref)
                if state.failure:
                    self.tail.write(f"{ref[1]}/{ref[2]} failed: {state.failure}\n")
                    raise StepFailedError(
                        f"{ref[1]} {ref[2]} will not become ready: {state.failure}",
                        self.tail.text(),
                    )
                if state.ready:
                    pending.remove(ref)
                    self.tail.write(f"{ref[1]}/{ref[2]} ready\n")
                else:
                    self.waiting_for = state.waiting_for
            if pending:
                await asyncio.sleep(POLL_SECONDS)
        self.waiting_for = ""

    async def clean(self) -> None:
        """Delete what this step created (newest first); objects already gone are fine."""
        problems = []
        for api_version, kind, name, namespace in reversed(self.created):
            try:
                await self.kube.delete(api_version, kind, name, namespace)
            except KubeError as exc:
                problems.append(exc.message)
        self.created.clear()
        if problems:
            raise KubeError("; ".join(problems))

    async def clean_abandoned(self) -> list[str]:
        """For a task whose owner was lost: delete the objects annotated as this step's."""
        mine = f"{self.ctx.task_id}/{self.ctx.step}"
        deleted = []
        for obj in self.objects:
            meta = obj.get("metadata") or {}
            kind, name, api_version = obj["kind"], meta["name"], obj["apiVersion"]
            namespace = meta.get("namespace") or self.namespace
            found = await self.kube.get(api_version, kind, name, namespace)
            if created_by(found) == mine and await self.kube.delete(
                api_version, kind, name, namespace
            ):
                deleted.append(f"{kind}/{name}")
        return deleted


def component_job(ctx: StepContext, step_type: str) -> ApplyJob:
    """A `webservice`, `store`, `config` or `secret` step: its rendered objects, applied."""
    return ApplyJob(ctx, render(step_type, ctx.properties, ctx.app_id, ctx.step))
