"""The `flowq` command: the local stack, migrations, and a client of the public API."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import grpc
from rich.console import Console
from rich.live import Live

from flowq.cli import render
from flowq.client import Client, ClientError, load_workflows
from flowq.errors import FlowqError
from flowq.tls import TlsFiles, channel

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

server_option = click.option(
    "--server",
    envvar="FLOWQ_SERVER",
    default="127.0.0.1:50051",
    show_default=True,
    help="apiserver gRPC address (FLOWQ_SERVER)",
)
queue_option = click.option(
    "--queue-server",
    envvar="FLOWQ_QUEUE_SERVER",
    default="127.0.0.1:50052",
    show_default=True,
    help="dispatcher gRPC address (FLOWQ_QUEUE_SERVER)",
)
output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)


class _Group(click.Group):
    """Errors print the server's message and exit non-zero; no tracebacks."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ClientError as exc:
            field = f" (field {exc.field})" if exc.field else ""
            err_console.print(
                f"[red]error:[/red] {exc.code}: {exc.message}{field}", markup=True, highlight=False
            )
            sys.exit(1)
        except FlowqError as exc:
            err_console.print(f"[red]error:[/red] {exc.message}", markup=True, highlight=False)
            sys.exit(1)


@click.group(cls=_Group)
@click.option(
    "--token",
    envvar="FLOWQ_TOKEN",
    default="",
    help="bearer token, when the servers have FLOWQ_API_TOKENS set (FLOWQ_TOKEN)",
)
@click.option(
    "--tls-ca",
    envvar="FLOWQ_TLS_CA",
    default="",
    help="CA that signed the servers' certificates; TLS on (FLOWQ_TLS_CA)",
)
@click.option(
    "--tls-cert",
    envvar="FLOWQ_TLS_CERT",
    default="",
    help="client certificate for servers that require one (FLOWQ_TLS_CERT)",
)
@click.option("--tls-key", envvar="FLOWQ_TLS_KEY", default="", help="its key (FLOWQ_TLS_KEY)")
@click.pass_context
def cli(ctx: click.Context, token: str, tls_ca: str, tls_cert: str, tls_key: str) -> None:
    """flowq: durable application-delivery workflows."""
    ctx.obj = {"token": token or None, "tls": TlsFiles(tls_cert, tls_key, tls_ca)}


def _client(server: str = "127.0.0.1:50051", queue_server: str = "127.0.0.1:50052") -> Client:
    """A client with the group's --token and TLS files."""
    obj = click.get_current_context().find_root().obj or {}
    return Client(server, queue_target=queue_server, token=obj.get("token"), tls=obj.get("tls"))


@cli.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path(".flowq"),
    show_default=True,
    help="where logs and a private Redis live",
)
def up(data_dir: Path) -> None:
    """Run the whole local stack (migrations, Redis, apiserver, dispatcher, executor)."""
    from flowq.cli.up import run_stack

    sys.exit(run_stack(data_dir, console))


@cli.command()
@server_option
@click.option(
    "--service",
    default="",
    help="health service name: '' is liveness, flowq.v1.WorkflowService (etc.) readiness",
)
@click.option("--timeout", default=3.0, show_default=True, help="seconds to wait for an answer")
def health(server: str, service: str, timeout: float) -> None:
    """Exit 0 when SERVER reports SERVICE as SERVING, else 1 (for probes and health checks)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    obj = click.get_current_context().find_root().obj or {}
    with channel(server, obj.get("tls") or TlsFiles(), []) as chan:
        try:
            reply = health_pb2_grpc.HealthStub(chan).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            err_console.print(f"{server} {service or '(liveness)'}: {exc.code().name}")
            sys.exit(1)
    state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    console.print(f"{server} {service or '(liveness)'}: {state}")
    sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)


@cli.group()
def db() -> None:
    """Database administration."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the Alembic migrations to FLOWQ_DATABASE_URL."""
    from flowq.config import Settings
    from flowq.db.migrate import upgrade

    settings = Settings.from_env("migrate")
    upgrade(settings.database_url, revision)
    console.print(f"database at {settings.public()['database_url']} is at revision {revision}")


@cli.command()
@click.option(
    "-f", "--file", "path", required=True, type=click.File("r"), help="YAML or JSON; - for stdin"
)
@click.option("--app", "app_id", help="application (default: appId in the file)")
@server_option
def apply(path: click.utils.LazyFile, app_id: str | None, server: str) -> None:
    """Create or replace the workflows in FILE."""
    workflows = load_workflows(path.read(), app_id)
    with _client(server) as flowq:
        for workflow in workflows:
            saved = flowq.put_workflow(workflow)
            console.print(f"workflow {saved.app_id}/{saved.name} version {saved.version} applied")


@cli.command("exec")
@click.argument("app_id")
@click.argument("workflow")
@click.option(
    "--wait", is_flag=True, help="follow the task until it ends; exit 1 unless it succeeded"
)
@click.option("--idempotency-key", default="", help="the same key returns the same task")
@server_option
def exec_(app_id: str, workflow: str, wait: bool, idempotency_key: str, server: str) -> None:
    """Start a task of WORKFLOW in application APP_ID."""
    with _client(server) as flowq:
        task = flowq.exec_workflow(app_id, workflow, idempotency_key)
        console.print(f"task {task.task_id} {render.task_status(task)}")
        if wait:
            _follow(flowq, task.task_id)


@cli.command()
@click.argument("task_id")
@output_option
@server_option
def get(task_id: str, output: str, server: str) -> None:
    """Show a task with its steps, output tails and events."""
    with _client(server) as flowq:
        task = flowq.get_task(task_id)
    if output == "json":
        click.echo(render.as_json(task))
    else:
        render.show_task(console, task)


@cli.command()
@click.argument("task_id")
@server_option
def watch(task_id: str, server: str) -> None:
    """Follow a task until it ends; exit 1 unless it succeeded."""
    with _client(server) as flowq:
        _follow(flowq, task_id)


def _follow(flowq: Client, task_id: str) -> None:
    last = None
    if console.is_terminal:
        with Live(console=console, refresh_per_second=8) as live:
            for last in flowq.watch_task(task_id):
                live.update(_live_view(last))
    else:
        seen: dict[str, str] = {}
        for last in flowq.watch_task(task_id):
            for step in last.steps:
                state = render.short(render.types_pb2.StepStatus.Name(step.status))
                if seen.get(step.name) != state:
                    seen[step.name] = state
                    console.print(
                        f"step {step.name} {state}" + (f": {step.message}" if step.message else "")
                    )
    if last is None:
        return
    render.show_task(console, last, events=False)
    if render.task_status(last) != "SUCCEEDED":
        sys.exit(1)


def _live_view(task: render.types_pb2.Task) -> object:
    from rich.table import Table

    table = Table(title=f"task {task.task_id}  {render.styled(render.task_status(task))}", box=None)
    for col in ("STEP", "STATUS", "ATTEMPTS", "DURATION", "MESSAGE"):
        table.add_column(col)
    for step in task.steps:
        table.add_row(
            step.name,
            render.styled(render.short(render.types_pb2.StepStatus.Name(step.status))),
            str(step.attempts),
            render.duration(step),
            step.message,
        )
    return table


@cli.command()
@click.argument("task_id")
@click.option("--reason", default="", help="why, recorded on the task")
@click.option("--user", default="", help="who, recorded on the task")
@server_option
def cancel(task_id: str, reason: str, user: str, server: str) -> None:
    """Cancel a task (QUEUED: at once; RUNNING: its owner stops it)."""
    with _client(server) as flowq:
        task = flowq.get_task(task_id)
        task = flowq.cancel_task(task.app_id, task_id, reason, user)
    console.print(
        f"task {task.task_id} {render.task_status(task)}"
        + (" (cancel requested)" if task.cancel_requested else "")
    )


@cli.command()
@click.argument("app_id", required=False, default="")
@click.option("--workflow", default="", help="only this workflow")
@click.option(
    "--status",
    type=click.Choice(
        ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"], case_sensitive=False
    ),
)
@click.option("--limit", default=20, show_default=True)
@output_option
@server_option
def tasks(
    app_id: str, workflow: str, status: str | None, limit: int, output: str, server: str
) -> None:
    """List tasks, newest first (of APP_ID, or of every application)."""
    with _client(server) as flowq:
        items = flowq.list_tasks(app_id, workflow_name=workflow, status=status, limit=limit)
    if output == "json":
        click.echo("[" + ",\n".join(render.as_json(t) for t in items) + "]")
    else:
        render.show_tasks(console, items)


@cli.group()
def queue() -> None:
    """The dispatch stream (through the dispatcher)."""


@queue.command("stats")
@queue_option
def queue_stats(queue_server: str) -> None:
    """Backlog, pending entries, dead letters and consumers."""
    with _client(queue_server=queue_server) as flowq:
        render.show_queue_stats(console, flowq.queue_stats())


@cli.group()
def dlq() -> None:
    """Dead letters: entries that could not be dispatched."""


@dlq.command("list")
@click.option("--limit", default=50, show_default=True, help="at most this many (up to 500)")
@output_option
@queue_option
def dlq_list(limit: int, output: str, queue_server: str) -> None:
    """Dead letters, newest first, with reason and attempts."""
    with _client(queue_server=queue_server) as flowq:
        letters = flowq.list_dead_letters(limit)
    if output == "json":
        click.echo("[" + ",\n".join(render.as_json(d) for d in letters) + "]")
    else:
        render.show_dead_letters(console, letters)


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="replay every dead letter")
@queue_option
def dlq_replay(ids: tuple[str, ...], everything: bool, queue_server: str) -> None:
    """Put dead letters IDS (or --all) back on the dispatch stream."""
    with _client(queue_server=queue_server) as flowq:
        console.print(f"replayed {flowq.replay_dead_letters(list(ids), everything)}")


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="purge every dead letter")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@queue_option
def dlq_purge(ids: tuple[str, ...], everything: bool, yes: bool, queue_server: str) -> None:
    """Delete dead letters IDS (or --all) for good."""
    if not yes:
        click.confirm(
            f"delete {'every dead letter' if everything else f'{len(ids)} dead letters'} for good?",
            abort=True,
        )
    with _client(queue_server=queue_server) as flowq:
        console.print(f"purged {flowq.purge_dead_letters(list(ids), everything)}")


def main() -> None:
    cli()
