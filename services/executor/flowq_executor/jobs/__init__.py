"""Step runners by step type (the types and their schemas are named in flowq.steptypes)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from flowq_executor.jobs.base import Job, StepContext, StepFailedError
from flowq_executor.jobs.http import HttpJob
from flowq_executor.jobs.kube_apply import ApplyJob, component_job
from flowq_executor.jobs.kube_job import KubeJobJob
from flowq_executor.jobs.shell import ShellJob
from flowq_executor.jobs.sleep import SleepJob

RUNNERS: dict[str, Callable[[StepContext], Job]] = {
    "shell": ShellJob,
    "sleep": SleepJob,
    "http": HttpJob,
    "apply": ApplyJob,
    "k8s-job": KubeJobJob,
    **{
        t: functools.partial(component_job, step_type=t)
        for t in ("webservice", "store", "config", "secret")
    },
}


def make_job(step_type: str, ctx: StepContext) -> Job:
    runner = RUNNERS.get(step_type)
    if runner is None:
        raise StepFailedError(
            f"this executor cannot run {step_type!r} steps; upgrade it or change the workflow"
        )
    return runner(ctx)


__all__ = ["RUNNERS", "Job", "StepContext", "StepFailedError", "make_job"]
