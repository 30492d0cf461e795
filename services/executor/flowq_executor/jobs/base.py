"""What a step runner is: `run()` does the work and returns its output tail; `clean()` removes
only what this job created. Runners raise `StepFailedError` with a message a person can act on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from flowq.errors import FlowqError

if TYPE_CHECKING:
    from flowq_executor.kube.client import KubeClient

OUTPUT_TAIL_CHARS = 4000


class StepFailedError(FlowqError):
    """The step's work failed; `output` is the tail of what it printed."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True)
class StepContext:
    task_id: str
    app_id: str
    workflow: str
    step: str
    attempt: int
    properties: dict[str, Any]
    allow_shell: bool
    timeout_seconds: float = 60.0
    #: The attempt that was RUNNING when the previous owner was lost (0: none). Kubernetes
    #: steps adopt what that attempt created instead of starting over.
    adopt_attempt: int = 0
    kube: KubeClient | None = None


class Job(Protocol):
    async def run(self) -> str: ...

    async def clean(self) -> None: ...


class Waiting(Protocol):
    """A job that can say what it is still waiting for (reported when the step times out)."""

    waiting_for: str


class OutputTail:
    """Keeps the last OUTPUT_TAIL_CHARS characters of a stream of text."""

    def __init__(self, limit: int = OUTPUT_TAIL_CHARS) -> None:
        self.limit = limit
        self._chunks: deque[str] = deque()
        self._size = 0

    def write(self, text: str) -> None:
        self._chunks.append(text)
        self._size += len(text)
        while self._size - len(self._chunks[0]) >= self.limit:
            self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        return "".join(self._chunks)[-self.limit :]
