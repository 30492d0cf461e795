"""How the CLI shows tasks, workflows and queue state (rich tables; plain when not a terminal)."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from flowq.v1 import queue_service_pb2, types_pb2

STYLE = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "yellow",
    "RUNNING": "cyan",
    "SKIPPED": "dim",
}


def short(enum_name: str) -> str:
    return enum_name.removeprefix("TASK_STATUS_").removeprefix("STEP_STATUS_")


def styled(name: str) -> str:
    color = STYLE.get(name)
    return f"[{color}]{name}[/{color}]" if color else name


def when(ts: object) -> str:
    if not ts or not ts.seconds:  # type: ignore[attr-defined]
        return "-"
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")  # type: ignore[attr-defined]


def duration(task: types_pb2.Task | types_pb2.StepRun) -> str:
    if not task.start_time.seconds:
        return "-"
    end = task.finish_time.ToDatetime() if task.finish_time.seconds else datetime.utcnow()
    seconds = (end - task.start_time.ToDatetime()).total_seconds()
    return f"{seconds:.1f}s"


def task_status(task: types_pb2.Task) -> str:
    return short(types_pb2.TaskStatus.Name(task.status))


def show_task(console: Console, task: types_pb2.Task, *, events: bool = True) -> None:
    name = task_status(task)
    console.print(
        f"[bold]task[/bold] {task.task_id}  {task.app_id}/{task.workflow_name}  {styled(name)}"
        + (f"  reason={task.reason}" if task.reason else "")
    )
    if task.message:
        console.print(f"  {task.message}", markup=False)
    console.print(
        f"  owner={task.owner_id or '-'} attempt={task.attempt} created={when(task.create_time)} "
        f"duration={duration(task)}"
    )
    table = Table(box=None, pad_edge=False)
    for col in ("STEP", "TYPE", "STATUS", "ATTEMPTS", "DURATION", "MESSAGE"):
        table.add_column(col)
    for step in task.steps:
        table.add_row(
            step.name,
            step.type,
            styled(short(types_pb2.StepStatus.Name(step.status))),
            str(step.attempts),
            duration(step),
            step.message,
        )
    console.print(table)
    for step in task.steps:
        if step.output.strip():
            console.print(f"[bold]--- output of {step.name} (tail)[/bold]")
            console.print(step.output.rstrip("\n"), markup=False, highlight=False)
    if events and task.events:
        console.print("[bold]events[/bold]")
        for event in task.events:
            console.print(
                f"  {when(event.time)}  {event.type:<16} {event.message}",
                markup=False,
                highlight=False,
            )


def show_tasks(console: Console, tasks: list[types_pb2.Task]) -> None:
    table = Table(box=None, pad_edge=False)
    for col in ("TASK", "APP", "WORKFLOW", "STATUS", "REASON", "CREATED", "DURATION"):
        table.add_column(col, no_wrap=col in ("TASK", "CREATED"))
    for task in tasks:
        table.add_row(
            task.task_id,
            task.app_id,
            task.workflow_name,
            styled(task_status(task)),
            task.reason,
            when(task.create_time),
            duration(task),
        )
    console.print(table)


def show_queue_stats(console: Console, stats: queue_service_pb2.QueueStats) -> None:
    table = Table(box=None, pad_edge=False, show_header=False)
    for key in ("stream", "length", "lag", "pending", "oldest_pending_age_ms", "dead_letters"):
        table.add_row(key, str(getattr(stats, key)))
    console.print(table)
    if stats.consumers:
        consumers = Table(box=None, pad_edge=False)
        for col in ("CONSUMER", "PENDING", "IDLE MS"):
            consumers.add_column(col)
        for c in stats.consumers:
            consumers.add_row(c.name, str(c.pending), str(c.idle_ms))
        console.print(consumers)


def show_dead_letters(console: Console, letters: list[queue_service_pb2.DeadLetter]) -> None:
    table = Table(box=None, pad_edge=False)
    for col in ("ID", "TASK", "REASON", "ATTEMPTS", "TIME", "LAST ERROR"):
        table.add_column(col, no_wrap=col in ("ID", "TASK"))
    for d in letters:
        table.add_row(d.id, d.task_id, d.reason, str(d.attempts), when(d.time), d.last_error)
    console.print(table)


def as_json(message: object) -> str:
    import json

    return json.dumps(json_format.MessageToDict(message), indent=2)  # type: ignore[arg-type]
