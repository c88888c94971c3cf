"""Periodic progress lines for long work: readable in a terminal and in NVFlare's site logs alike."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("fedseg")


class Progress:
    """Logs ``label step/total`` with the latest values every ``every_s`` seconds while work goes on.

    Short work logs nothing; callers log their own one-line summary when done.
    """

    def __init__(self, label: str, total: int, every_s: float = 20.0, logger: logging.Logger = log):
        self.label, self.total, self.every_s, self.logger = label, total, every_s, logger
        self.start = self.last = time.perf_counter()
        self.step = 0

    def update(self, step: int, **values: float) -> None:
        self.step = step
        now = time.perf_counter()
        if now - self.last >= self.every_s and step < self.total:
            self.last = now
            self._emit(values)

    def _emit(self, values: dict) -> None:
        rate = self.step / max(time.perf_counter() - self.start, 1e-9)
        extra = " ".join(f"{k} {v:.4f}" for k, v in values.items())
        self.logger.info("%s %d/%d (%.2f/s) %s", self.label, self.step, self.total, rate, extra)
