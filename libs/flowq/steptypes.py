"""Step types and the schema of their properties: shared by the apiserver (validation at
PutWorkflow) and the executor (which runs them). One place names every type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Property:
    name: str
    check: Callable[[Any], str | None]  # returns a problem, or None when the value is fine
    required: bool = False


@dataclass(frozen=True)
class StepType:
    name: str
    properties: tuple[Property, ...]
    default_timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    needs_shell: bool = False

    def problems(self, props: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(property, problem) pairs for `props`; empty when they are valid."""
        known = {p.name: p for p in self.properties}
        found = [
            (name, f"unknown property for a {self.name} step; known: {', '.join(sorted(known))}")
            for name in props
            if name not in known
        ]
        for prop in self.properties:
            if prop.name not in props:
                if prop.required:
                    found.append((prop.name, f"required by a {self.name} step"))
                continue
            problem = prop.check(props[prop.name])
            if problem:
                found.append((prop.name, problem))
        return found


def _command(value: Any) -> str | None:
    if isinstance(value, str):
        return None if value.strip() else "must not be empty"
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return None
    return "must be a non-empty list of strings, or a string run by sh -c"


def _string_map(value: Any) -> str | None:
    if isinstance(value, dict) and all(
        isinstance(v, str | int | float | bool) for v in value.values()
    ):
        return None
    return "must be a map of names to strings"


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _non_negative_number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    return None if value >= 0 else "must not be negative"


SHELL = StepType(
    "shell",
    (
        Property("command", _command, required=True),
        Property("env", _string_map),
        Property("workingDir", _string),
    ),
    needs_shell=True,
)
SLEEP = StepType("sleep", (Property("seconds", _non_negative_number, required=True),))

#: The step types this version of flowq can run.
STEP_TYPES: dict[str, StepType] = {t.name: t for t in (SHELL, SLEEP)}
