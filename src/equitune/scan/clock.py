"""Wall and CPU seconds of a piece of work, the cost every SCAN cell reports."""

from __future__ import annotations

import time

__all__ = ["Clock", "Seconds", "add_seconds", "subtract_seconds"]

Seconds = dict[str, float]
"""``{"seconds": wall, "cpu_seconds": cpu}``."""


class Clock:
    """Wall and CPU seconds since it was made (CPU seconds stay meaningful on a shared machine)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def seconds(self) -> Seconds:
        return {"seconds": time.perf_counter() - self.wall, "cpu_seconds": time.process_time() - self.cpu}


def add_seconds(a: Seconds, b: Seconds) -> Seconds:
    return {key: a[key] + b[key] for key in a}


def subtract_seconds(a: Seconds, b: Seconds) -> Seconds:
    return {key: a[key] - b[key] for key in a}
