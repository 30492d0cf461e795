"""`shell` steps: a local command in its own process group.

On cancellation or timeout the whole group gets SIGTERM, then SIGKILL after a short grace.

The command is started through util-linux's `setpriv --pdeathsig KILL` when it is installed
(it is in Debian-based images): the kernel kills the command the moment its executor dies,
so an executor killed outside a container (where its whole container would go with it)
leaves no step running beside the one that resumes its task elsewhere. Without setpriv the
command runs as it is, and only the group kill above stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal

from flowq_executor.jobs.base import OutputTail, StepContext, StepFailedError

KILL_GRACE_SECONDS = 3.0
SETPRIV = shutil.which("setpriv")
_SETPRIV_CANNOT_EXEC = "setpriv: failed to execute "


class ShellJob:
    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.tail = OutputTail()

    def _argv(self) -> list[str]:
        command = self.ctx.properties["command"]
        return ["sh", "-c", command] if isinstance(command, str) else [str(c) for c in command]

    def _env(self) -> dict[str, str]:
        # The executor's own settings (database and Redis URLs with their passwords) stay out.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWQ_")}
        env.update({str(k): str(v) for k, v in (self.ctx.properties.get("env") or {}).items()})
        env.update(
            FLOWQ_TASK_ID=self.ctx.task_id,
            FLOWQ_APP_ID=self.ctx.app_id,
            FLOWQ_WORKFLOW=self.ctx.workflow,
            FLOWQ_STEP=self.ctx.step,
            FLOWQ_ATTEMPT=str(self.ctx.attempt),
        )
        return env

    async def run(self) -> str:
        if not self.ctx.allow_shell:
            raise StepFailedError(
                "shell steps are disabled on this executor (set FLOWQ_EXECUTOR_ALLOW_SHELL=true)"
            )
        argv = self._argv()
        launch = [SETPRIV, "--pdeathsig", "KILL", "--", *argv] if SETPRIV else argv
        try:
            proc = await asyncio.create_subprocess_exec(
                *launch,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.ctx.properties.get("workingDir") or None,
                env=self._env(),
                start_new_session=True,
            )
        except OSError as exc:
            raise StepFailedError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
        try:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(4096):
                self.tail.write(chunk.decode("utf-8", "replace"))
            code = await proc.wait()
        except BaseException:
            await _stop_group(proc)
            raise
        if SETPRIV and code == 127 and self.tail.text().startswith(_SETPRIV_CANNOT_EXEC):
            why = self.tail.text().strip().rsplit(": ", 1)[-1]  # as without setpriv
            raise StepFailedError(f"cannot start {argv[0]!r}: {why}")
        if code != 0:
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            raise StepFailedError(f"command failed with {how}", self.tail.text())
        return self.tail.text()

    async def clean(self) -> None:
        """A shell step creates nothing flowq tracks; its process group is stopped in run()."""


async def _stop_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group, SIGKILL it after KILL_GRACE_SECONDS."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), KILL_GRACE_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
