"""Redis key names: the one place that spells them (prefix FLOWQ_KEY_PREFIX, default `flowq`)."""

from __future__ import annotations

from dataclasses import dataclass

CONSUMER_GROUP = "flowq-dispatchers"


@dataclass(frozen=True)
class Keys:
    prefix: str = "flowq"

    @property
    def dispatch(self) -> str:
        """The dispatch stream; consumer group `flowq-dispatchers`."""
        return f"{self.prefix}:dispatch"

    @property
    def dead_letters(self) -> str:
        """The dead-letter stream."""
        return f"{self.prefix}:dispatch:dlq"

    @property
    def cancel(self) -> str:
        """Pub/sub channel of cancel requests."""
        return f"{self.prefix}:cancel"

    @property
    def task_changes(self) -> str:
        """Pub/sub channel: the id of a task whose state just changed (wakes watchers)."""
        return f"{self.prefix}:task-changes"

    @property
    def group(self) -> str:
        return CONSUMER_GROUP
