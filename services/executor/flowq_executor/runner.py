"""The executor's hands: claims tasks, runs each under a TaskController, heartbeats its lease,
watches for cancel requests, and on drain hands back what it still holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from flowq import channels, status, stream
from flowq.backoff import Backoff
from flowq.changes import ChangeNotifier
from flowq.config import Settings
from flowq.db import Database, utcnow
from flowq.errors import ResourceExhaustedError, UnavailableError
from flowq.keys import Keys
from flowq.log import log_context
from flowq.supervise import beat
from flowq_executor import repository
from flowq_executor.controller import TaskController
from flowq_executor.kube.client import KubeClient

log = logging.getLogger(__name__)

TASKS_CLAIMED = Counter("flowq_executor_tasks_claimed_total", "Tasks this executor claimed.")
TASKS_RUNNING = Gauge("flowq_executor_tasks_running", "Tasks this executor holds now.")
TASKS_RELEASED = Counter(
    "flowq_executor_tasks_released_total", "Tasks handed back to the queue.", ["why"]
)
TASKS_GAVE_UP = Counter(
    "flowq_executor_tasks_gave_up_total",
    "Tasks FAILED (executor-error) after failing on executors FLOWQ_MAX_TASK_ATTEMPTS times.",
)
HEARTBEAT_FAILURES = Counter(
    "flowq_executor_heartbeat_failures_total", "Lease renewals that failed."
)

HAND_BACK_SECONDS = 30.0


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str = ""
    owner_id: str = ""
    epoch: int = 0


class TaskRunner:
    def __init__(self, settings: Settings, db: Database, redis: aioredis.Redis, keys: Keys) -> None:
        self.settings = settings
        self.db = db
        self.redis = redis
        self.keys = keys
        # The owner token: the instance id plus a per-start suffix, so a restarted executor that
        # keeps its instance id (a pinned FLOWQ_INSTANCE_ID, PID 1 in a container) never renews
        # the lease of the tasks its previous life held; those are recovered when it expires.
        self.instance_id = f"{settings.instance_id}-{uuid.uuid4().hex[:6]}"
        self.capacity = settings.executor_max_tasks
        self.draining = False
        self.started_at = utcnow()
        self._slots: dict[str, TaskController | None] = {}  # None while a claim is in flight
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.last_heartbeat = 0.0
        self.has_lease = False  # no task is claimed before the first lease renewal
        # Connects on first use: an executor that never runs a Kubernetes step needs no cluster.
        self.kube = KubeClient(settings.kubeconfig, settings.kube_namespace)
        self.changes = ChangeNotifier(redis, keys)

    # -- RunTask -------------------------------------------------------------------------------

    async def run_task(self, task_id: str) -> Decision:
        """Claim `task_id` and start it in the background; raise when this executor cannot take work."""
        if self.draining:
            raise UnavailableError(
                f"executor {self.instance_id} is shutting down; try another executor"
            )
        if not self.lease_fresh():
            raise UnavailableError(
                f"executor {self.instance_id} holds no fresh lease (is the database reachable?)"
            )
        if task_id in self._slots:
            return Decision(False, "running-here", self.instance_id)
        if len(self._slots) >= self.capacity:
            raise ResourceExhaustedError(
                f"executor {self.instance_id} is full ({self.capacity} tasks, FLOWQ_EXECUTOR_MAX_TASKS)"
            )
        self._slots[task_id] = None
        try:
            async with self.db.session() as session:
                claimed = await repository.claim(session, task_id, self.instance_id)
                if claimed is None:
                    state = await repository.task_state(session, task_id)
        except BaseException:
            self._slots.pop(task_id, None)
            raise
        if claimed is None:
            self._slots.pop(task_id, None)
            if state is None:
                return Decision(False, "missing")
            task_status, owner, _cancel = state
            return Decision(
                False,
                "terminal" if task_status in status.TERMINAL_TASK_STATUSES else "owned",
                owner or "",
            )
        controller = TaskController(
            self.db,
            claimed,
            self.settings.executor_allow_shell,
            hand_back=self.hand_back,
            on_done=lambda: self._done(task_id),
            kube=self.kube,
            on_change=self.changes.changed,
        )
        self.changes.changed(task_id)  # RUNNING, claimed
        self._slots[task_id] = controller
        if claimed.cancel_requested:  # cancelled while it waited to be recovered: no step starts
            controller.request_stop("cancelled", "cancelled on request")
        self._tasks[task_id] = asyncio.create_task(controller.run(), name=f"task:{task_id}")
        TASKS_CLAIMED.inc()
        TASKS_RUNNING.set(len(self._tasks))
        return Decision(True, "", self.instance_id, claimed.fence.epoch)

    def _done(self, task_id: str) -> None:
        self._slots.pop(task_id, None)
        self._tasks.pop(task_id, None)
        TASKS_RUNNING.set(len(self._tasks))

    def lease_fresh(self) -> bool:
        """True while the last renewal is younger than the lease TTL."""
        age = time.monotonic() - self.last_heartbeat
        return self.has_lease and age < self.settings.lease_ttl_seconds

    def running(self) -> list[str]:
        return list(self._tasks)

    # -- hand back -------------------------------------------------------------------------

    async def hand_back(
        self,
        fence: repository.Fence,
        why: str,
        failure: bool = False,
        kept: Sequence[repository.StepWrite] = (),
    ) -> None:
        """RUNNING -> QUEUED (epoch + 1) and re-enqueue, retrying a short while on errors.

        A hand-back after an executor error (`failure`) counts as an attempt: past
        FLOWQ_MAX_TASK_ATTEMPTS the task is FAILED instead of looping through executors forever.
        `kept` (step ends not yet written) are written first, in the same transaction.
        """
        backoff = Backoff(base=0.2, cap=5.0)
        deadline = time.monotonic() + HAND_BACK_SECONDS
        with log_context(task_id=fence.task_id):
            while True:
                try:
                    async with self.db.session() as session:
                        released = await repository.release(
                            session,
                            fence,
                            why,
                            count_attempt=failure,
                            max_attempts=self.settings.max_task_attempts,
                            before=kept,
                        )
                    break
                except Exception as exc:  # noqa: BLE001 - retried, then left to the recovery sweep
                    if time.monotonic() > deadline:
                        log.error(
                            "could not hand the task back; the recovery sweep will take it after the lease "
                            "expires",
                            extra={"error": str(exc)},
                        )
                        return
                    await asyncio.sleep(backoff.next())
            if released is None:
                return  # the fence moved: someone else has the task
            self.changes.changed(fence.task_id)
            if released == status.FAILED:
                TASKS_GAVE_UP.inc()
                log.error("task failed: it kept failing on executors", extra={"why": why})
                return
            TASKS_RELEASED.labels(why="error" if failure else "shutdown").inc()
            try:
                await stream.enqueue(
                    self.redis,
                    self.keys,
                    stream.Envelope.new(fence.task_id, fence.attempt + (1 if failure else 0)),
                )
            except (RedisError, OSError) as exc:
                log.warning(
                    "released task not enqueued; the sweep will enqueue it",
                    extra={"error": str(exc)},
                )
            log.info("task handed back", extra={"why": why})

    # -- heartbeat and cancel checks ------------------------------------------------------

    async def heartbeat_loop(self) -> None:
        """Renew this executor's lease; check the cancel flag of every task it holds."""
        backoff = Backoff(base=0.1, cap=self.settings.heartbeat_seconds)
        while True:
            beat()
            try:
                async with self.db.session() as session:
                    await repository.renew_lease(
                        session, self.instance_id, self.settings.lease_ttl_seconds, self.started_at
                    )
                self.last_heartbeat = time.monotonic()
                if not self.has_lease:
                    self.has_lease = True
                    log.info("lease taken", extra={"owner_id": self.instance_id})
                await self._check_cancels()
                backoff.reset()
                await asyncio.sleep(self.settings.heartbeat_seconds)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a database blip; retry soon
                HEARTBEAT_FAILURES.inc()
                log.warning(
                    "lease renewal failed",
                    extra={"error": str(exc), "failures": backoff.failures + 1},
                )
                await asyncio.sleep(backoff.next())

    async def _check_cancels(self) -> None:
        """One query for every task held: stop those whose cancel was requested or whose fence moved."""
        held = {
            c.fence.task_id: c for c in self._slots.values() if c is not None and not c.stop.reason
        }
        if not held:
            return
        async with self.db.session() as session:
            states = await repository.fence_states(session, [c.fence for c in held.values()])
        for task_id, controller in held.items():
            state = states.get(task_id)
            if state is None:
                controller.request_stop("fenced")
            elif state:
                log.info("cancel requested", extra={"task_id": task_id})
                controller.request_stop("cancelled", "cancelled on request")

    # -- cancel channel ----------------------------------------------------------------------

    async def cancel_listener_loop(self) -> None:
        """Stop a held task as soon as its cancel is published on the cancel channel.

        The database flag is the truth and the heartbeat checks it, so a message lost while
        Redis is away only makes the cancel slower; the channel makes it immediate.
        """
        await channels.follow(
            self.redis,
            self.keys.cancel,
            self._cancel_published,
            lost="cancel channel lost; cancels arrive with the heartbeat until it is back",
            retry_cap_seconds=self.settings.heartbeat_seconds,
        )

    async def _cancel_published(self, task_id: str) -> None:
        controller = self._slots.get(task_id)
        if controller is None or controller.stop.reason:
            return  # not ours (every executor hears every cancel), or already stopping
        try:
            async with self.db.session() as session:
                states = await repository.fence_states(session, [controller.fence])
        except Exception as exc:  # noqa: BLE001 - the heartbeat's check will see the flag
            log.warning(
                "could not read a published cancel's flag; the heartbeat will",
                extra={"task_id": task_id, "error": str(exc)},
            )
            return
        if states.get(task_id):
            log.info("cancel requested", extra={"task_id": task_id, "via": "channel"})
            controller.request_stop("cancelled", "cancelled on request")

    # -- drain ------------------------------------------------------------------------------

    async def drain(self, grace_seconds: float) -> None:
        """Refuse new tasks, let running ones finish within the grace, hand back the rest."""
        self.draining = True
        if self._tasks:
            log.info(
                "waiting for running tasks",
                extra={"tasks": len(self._tasks), "grace_seconds": grace_seconds},
            )
            await asyncio.wait(list(self._tasks.values()), timeout=max(0.0, grace_seconds - 2))
        for controller in list(self._slots.values()):
            if controller is not None:
                controller.request_stop("released", "executor shutting down")
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=HAND_BACK_SECONDS)
        for task in list(self._tasks.values()):
            task.cancel()
        try:
            async with self.db.session() as session:
                await repository.drop_lease(session, self.instance_id)
        except Exception as exc:  # noqa: BLE001 - the lease simply expires
            log.warning("could not drop the lease; it expires by itself", extra={"error": str(exc)})
