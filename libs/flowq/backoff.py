"""Exponential backoff with full jitter (AWS architecture blog's "full jitter")."""

from __future__ import annotations

import random


class Backoff:
    """`next()` gives a random delay in [0, min(cap, base * 2**n)]; `reset()` after a success."""

    def __init__(self, base: float = 0.1, cap: float = 300.0) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.failures, 32)))
        self.failures += 1
        return random.uniform(0, ceiling)

    def reset(self) -> None:
        self.failures = 0
