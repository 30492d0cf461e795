"""`sleep` steps: wait `seconds`."""

from __future__ import annotations

import asyncio

from flowq_executor.jobs.base import StepContext


class SleepJob:
    def __init__(self, ctx: StepContext) -> None:
        self.seconds = float(ctx.properties["seconds"])

    async def run(self) -> str:
        await asyncio.sleep(self.seconds)
        return f"slept {self.seconds:g}s"

    async def clean(self) -> None:
        """Nothing to clean."""
