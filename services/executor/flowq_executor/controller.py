"""The step controller: runs one claimed task's steps as ARCHITECTURE.md's "Controller semantics".

STEP_BY_STEP is a DAG in which every step depends on all steps of lower priority, at most
`maxConcurrency` (default 1) at once, always fail-fast. DAG uses `dependsOn`, `maxConcurrency`
(0 = unlimited) and `failFast`. Steps that already succeeded are never run again.
Every write goes through the fence; when it moved, the controller stops without touching state.

A step's end (SUCCEEDED) is kept back until the task's next write, which carries it: in a serial
workflow one transaction records a step's end and the next step's start, and the last step's
end goes with the task's. When nothing else is written right away (other steps still run),
it is written on its own before the controller waits. If the executor dies before it is
written, the step runs again on recovery, as it would have had it died a moment earlier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from sqlalchemy.ext.asyncio import AsyncSession

from flowq import status
from flowq.db import Database, utcnow
from flowq.errors import FencedError
from flowq.log import log_context
from flowq.steptypes import STEP_TYPES, plain_properties
from flowq.v1 import types_pb2
from flowq_executor import repository
from flowq_executor.jobs import StepContext, StepFailedError, make_job
from flowq_executor.kube.client import KubeClient
from flowq_executor.repository import Claimed

log = logging.getLogger(__name__)

FAILED_LIKE = frozenset({status.FAILED, status.SKIPPED, status.CANCELLED})


@dataclass
class Plan:
    order: list[types_pb2.Step]
    deps: dict[str, set[str]]
    limit: int | None
    fail_fast: bool


def make_plan(workflow: types_pb2.Workflow) -> Plan:
    steps = list(workflow.steps)
    if workflow.mode == types_pb2.DAG:
        return Plan(
            steps,
            {s.name: set(s.depends_on) for s in steps},
            workflow.max_concurrency or None,
            workflow.fail_fast,
        )
    order = sorted(steps, key=lambda s: s.priority)  # stable: declared order within a priority
    deps = {s.name: {o.name for o in steps if o.priority < s.priority} for s in steps}
    return Plan(order, deps, max(1, workflow.max_concurrency), True)


@dataclass
class _Stop:
    """Why the controller is stopping its running steps."""

    reason: str = ""  # fail-fast | cancelled | timeout | released | fenced
    message: str = ""


@dataclass
class TaskController:
    db: Database
    claimed: Claimed
    allow_shell: bool
    #: Hands the task back to the queue (RUNNING -> QUEUED, epoch + 1, re-enqueued); the third
    #: argument says it failed here (counts as an attempt), the fourth are step ends still kept
    #: back, written in the same transaction.
    hand_back: Callable[
        [repository.Fence, str, bool, Sequence[repository.StepWrite]], Awaitable[None]
    ]
    #: Called when the task ended or was handed back; the runner frees the slot.
    on_done: Callable[[], None] = lambda: None
    kube: KubeClient | None = None
    #: Told the task id after every committed write (wakes WatchTask callers at once).
    on_change: Callable[[str], None] = lambda _task_id: None
    stop: _Stop = field(default_factory=_Stop)
    _steps: dict[str, asyncio.Task[bool]] = field(default_factory=dict)
    #: Step ends kept back for the task's next write (see the module's docstring).
    _kept: list[repository.StepWrite] = field(default_factory=list)

    @property
    def fence(self) -> repository.Fence:
        return self.claimed.fence

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncSession]:
        """A session for one write; watchers hear of it once it is committed."""
        async with self.db.session() as session:
            yield session
        self.on_change(self.fence.task_id)

    def _take_kept(self) -> list[repository.StepWrite]:
        kept, self._kept = self._kept, []
        return kept

    @contextlib.asynccontextmanager
    async def _carrying_kept(self) -> AsyncIterator[list[repository.StepWrite]]:
        """The step ends kept back, for the write about to be made. If that write is interrupted
        (a stop cancels a step in its write) or fails, they stay kept: the next write, the
        task's end or its hand-back carries them."""
        kept = self._take_kept()
        try:
            yield kept
        except BaseException:
            self._kept[:0] = kept
            raise

    async def _write_steps(self, *writes: repository.StepWrite) -> None:
        """One fenced transaction: the step ends kept back, then `writes`."""
        async with self._carrying_kept() as kept:
            if kept or writes:
                async with self._writing() as s:
                    await repository.write_steps(s, self.fence, [*kept, *writes])

    async def _write_step(
        self, name: str, *, event: str | None = None, event_message: str = "", **columns: Any
    ) -> None:
        """Set a step's columns and append its event, carrying the step ends kept back."""
        await self._write_steps(repository.StepWrite(name, columns, event, event_message))

    def request_stop(self, reason: str, message: str = "") -> None:
        """Stop every running step now (cancel, timeout, release, fence moved).

        Only the first request counts: a second one (the cancel channel and the heartbeat both
        seeing one cancel, a drain during a cancel) must not interrupt the steps while they
        clean up and record how they ended.
        """
        if self.stop.reason:
            return
        self.stop.reason, self.stop.message = reason, message
        for task in self._steps.values():
            task.cancel()

    async def run(self) -> None:
        with log_context(task_id=self.fence.task_id, attempt=self.fence.attempt):
            try:
                await self._run()
            except FencedError as exc:
                log.warning(
                    "fence moved; stopping without touching the task", extra={"error": exc.message}
                )
                self.request_stop("fenced")
                await self._await_steps()
            except Exception as exc:
                # A database error mid-run: do not sit on the task; hand it back for another try.
                log.exception("task run failed; handing the task back")
                self.request_stop("released", f"executor error: {type(exc).__name__}: {exc}")
                await self._await_steps()
                # Steps that succeeded are recorded with the hand-back, so they do not run again.
                await self.hand_back(self.fence, self.stop.message, True, self._take_kept())
            finally:
                self.on_done()

    async def _run(self) -> None:
        try:
            workflow = json_format.ParseDict(
                self.claimed.spec, types_pb2.Workflow(), ignore_unknown_fields=True
            )
        except (json_format.ParseError, TypeError, ValueError) as exc:
            # Not transient: handing it back would only fail again elsewhere. Fail it, saying why.
            async with self._writing() as s:
                await repository.finish_task(
                    s,
                    self.fence,
                    status.FAILED,
                    status.REASON_INVALID,
                    f"the task's workflow definition cannot be read: {exc}",
                )
            return
        plan = make_plan(workflow)
        states = {name: st for name, (st, _attempts) in self.claimed.steps.items()}
        attempts = {name: a for name, (_st, a) in self.claimed.steps.items()}
        # Resume: steps that ended (succeeded, failed, skipped, cancelled) never run again; a step
        # that was RUNNING under a previous owner runs again.
        pending = [s for s in plan.order if states.get(s.name) not in status.TERMINAL_STEP_STATUSES]
        failures: list[tuple[str, str, bool]] = [  # (step, message, timed out)
            (s.name, "failed before the task was recovered", False)
            for s in plan.order
            if states.get(s.name) == status.FAILED
        ]
        if failures and plan.fail_fast:
            pending = []
        # The task's deadline counts from its creation (time spent queued or recovering counts too).
        remaining = None
        if self.claimed.deadline_at is not None:
            remaining = max(0.0, (self.claimed.deadline_at - utcnow()).total_seconds())
        log.info(
            "task started",
            extra={"steps": len(plan.order), "resumed_steps": len(plan.order) - len(pending)},
        )
        try:
            async with asyncio.timeout(remaining):
                await self._schedule(plan, pending, states, attempts, failures)
        except TimeoutError:
            self.request_stop(
                "timeout",
                f"the task ran past its workflow timeoutSeconds ({workflow.timeout_seconds}s)",
            )
            await self._await_steps()
        await self._finish(failures)

    async def _schedule(
        self,
        plan: Plan,
        pending: list[types_pb2.Step],
        states: dict[str, str],
        attempts: dict[str, int],
        failures: list[tuple[str, str, bool]],
    ) -> None:
        waiting = list(pending)
        while waiting or self._steps:
            if self.stop.reason:
                break
            for step in list(waiting):
                if any(states.get(d) in FAILED_LIKE for d in plan.deps[step.name]):
                    waiting.remove(step)
                    states[step.name] = status.SKIPPED
                    await self._write_step(
                        step.name,
                        status=status.SKIPPED,
                        message="a step it depends on did not succeed",
                    )
            started = False
            for step in list(waiting):
                if plan.limit is not None and len(self._steps) >= plan.limit:
                    break
                if all(states.get(d) == status.SUCCEEDED for d in plan.deps[step.name]):
                    waiting.remove(step)
                    self._steps[step.name] = asyncio.create_task(
                        self._run_step(
                            step,
                            attempts.get(step.name, 0),
                            failures,
                            # Started under an earlier owner and never finished (recovery puts
                            # such steps back to PENDING, keeping their attempts).
                            interrupted=attempts.get(step.name, 0) > 0,
                        ),
                        name=f"step:{step.name}",
                    )
                    started = True
            if not self._steps:
                break
            if not started:  # no step start carries the kept step ends: write them now
                await self._write_steps()
            done, _ = await asyncio.wait(self._steps.values(), return_when=asyncio.FIRST_COMPLETED)
            for name, task in list(self._steps.items()):
                if task not in done:
                    continue
                del self._steps[name]
                if task.cancelled():
                    states[name] = status.CANCELLED
                    continue
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
                states[name] = status.SUCCEEDED if task.result() else status.FAILED
                if not task.result() and plan.fail_fast:
                    self.request_stop("fail-fast", f"step {name!r} failed")
        await self._await_steps()

    async def _await_steps(self) -> None:
        if self._steps:
            await asyncio.gather(*self._steps.values(), return_exceptions=True)
            self._steps.clear()

    async def _run_step(
        self,
        step: types_pb2.Step,
        prior_attempts: int,
        failures: list[tuple[str, str, bool]],
        interrupted: bool = False,
    ) -> bool:
        """Run one step with its timeout and retries; True when it succeeded."""
        with log_context(step=step.name):
            step_type = STEP_TYPES.get(step.type)
            timeout = step.timeout_seconds or (
                step_type.default_timeout_seconds if step_type else 60
            )
            allowed = max(1, step.retry.max_attempts)
            props = plain_properties(step.properties)
            for n in range(1, allowed + 1):
                attempt = prior_attempts + n
                await self._write_step(
                    step.name,
                    status=status.RUNNING,
                    attempts=attempt,
                    message="",
                    started_at=utcnow(),
                    finished_at=None,
                    event="step-started",
                    event_message=f"{step.name} attempt {attempt}",
                )
                ctx = StepContext(
                    self.fence.task_id,
                    self.claimed.app_id,
                    self.claimed.workflow_name,
                    step.name,
                    attempt,
                    props,
                    self.allow_shell,
                    timeout_seconds=timeout,
                    adopt_attempt=prior_attempts if n == 1 and interrupted else 0,
                    kube=self.kube,
                )
                output, timed_out = "", False
                job = None
                try:
                    job = make_job(step.type, ctx)
                    async with asyncio.timeout(timeout):
                        output = await job.run()
                except StepFailedError as exc:
                    message, output = exc.message, exc.output
                except TimeoutError:
                    waiting = getattr(job, "waiting_for", "")
                    message, timed_out = (
                        f"timeout: the step ran longer than its timeoutSeconds ({timeout}s)"
                        + (f"; still waiting for {waiting}" if waiting else ""),
                        True,
                    )
                except asyncio.CancelledError:
                    await self._clean(step, job)
                    if self.stop.reason in ("fail-fast", "cancelled", "timeout"):
                        await self._write_step(
                            step.name,
                            status=status.CANCELLED,
                            finished_at=utcnow(),
                            message=f"stopped: {self.stop.message or self.stop.reason}",
                            event="step-cancelled",
                            event_message=step.name,
                        )
                    raise
                else:
                    self._kept.append(
                        repository.StepWrite(
                            step.name,
                            {"status": status.SUCCEEDED, "output": output, "finished_at": utcnow()},
                            "step-succeeded",
                            step.name,
                        )
                    )
                    return True
                await self._clean(step, job)
                if n < allowed:
                    delay = step.retry.backoff_seconds * (2 ** (n - 1)) * random.uniform(0.8, 1.2)
                    await self._write_step(
                        step.name,
                        output=output,
                        message=f"attempt {attempt} failed: {message}; retrying in {delay:.1f}s",
                        event="step-retrying",
                        event_message=f"{step.name}: {message}",
                    )
                    await asyncio.sleep(delay)
                    continue
                await self._write_step(
                    step.name,
                    status=status.FAILED,
                    message=message,
                    output=output,
                    finished_at=utcnow(),
                    event="step-failed",
                    event_message=f"{step.name}: {message}",
                )
                failures.append((step.name, message, timed_out))
                log.info("step failed", extra={"error": message})
                return False
            return False

    async def _clean(self, step: types_pb2.Step, job: object | None) -> None:
        if job is None:
            return
        try:
            await asyncio.shield(job.clean())  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - recorded, never hides the step's own error
            log.warning("clean failed", extra={"error": str(exc)})
            with contextlib.suppress(FencedError):
                await self._write_step(
                    step.name, event="clean-failed", event_message=f"{step.name}: {exc}"
                )

    async def _finish(self, failures: list[tuple[str, str, bool]]) -> None:
        reason = self.stop.reason
        if reason == "fenced":
            return  # the task belongs to someone else now
        if reason == "released":
            # Steps that succeeded are recorded with the hand-back, so they do not run again.
            await self.hand_back(self.fence, self.stop.message, False, self._take_kept())
            return
        if reason == "cancelled":
            final, why, message = (
                status.CANCELLED,
                status.REASON_CANCELLED,
                self.stop.message or "cancelled",
            )
        elif reason == "timeout":
            final, why, message = status.FAILED, status.REASON_TIMEOUT, self.stop.message
        elif failures:
            name, error, timed_out = failures[0]
            final, why = (
                status.FAILED,
                status.REASON_TIMEOUT if timed_out else status.REASON_STEP_FAILED,
            )
            message = f"step {name!r} failed: {error}"
        else:
            final, why, message = status.SUCCEEDED, "", ""
        async with self._carrying_kept() as kept, self._writing() as s:
            await repository.finish_task(s, self.fence, final, why, message, before=kept)
        log.info("task finished", extra={"status": final, "reason": why})
