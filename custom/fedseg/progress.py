"""Progress of long work: a tqdm bar on a terminal, a periodic one-line log entry everywhere else.

One object per piece of work drives both: where stderr is a terminal the user sees a tqdm bar (and
no periodic log lines, which would only break it); in logs, CI and NVFlare's site logs a line
``label step/total (rate/s) values`` every ``every_s`` seconds. Set ``TQDM_DISABLE=1`` to get the
log lines on a terminal too.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Iterable, Iterator, TypeVar

from tqdm import tqdm

log = logging.getLogger("fedseg")
T = TypeVar("T")


def log_lines_only() -> None:
    """No bars in this process (and those it starts), whatever stderr is: progress goes to the log.

    For processes whose log is the record, such as an NVFlare site: under a plain ``nvflare
    simulator`` in a terminal every site's process shares that terminal, and bars from several of
    them would garble it and leave the site's log without progress lines.
    """
    os.environ["TQDM_DISABLE"] = "1"


def bar_wanted(stream: IO | None = None) -> bool:
    """Whether a progress bar can be drawn: ``stream`` (default stderr) is a terminal and tqdm is not disabled."""
    stream = stream or sys.stderr
    if os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class Progress:
    """``update(step)`` as work goes on; a bar on a terminal, else a log line every ``every_s`` seconds.

    Short work logs nothing; callers log their own one-line summary when done. The bar closes by
    itself when ``step`` reaches ``total`` (or on :meth:`close`, or leaving a ``with`` block).

    Args:
        label: what is being done, e.g. ``"epoch 1-5/80"`` or ``"synthesize spleen phantoms"``.
        total: the number of steps.
        every_s: seconds between log lines when no bar is drawn.
        unit: the bar's unit (``"it"``, ``"case"``, ``"window"``...).
        bar: force the bar on or off (default: :func:`bar_wanted`).
        stream: where the bar is drawn (default stderr).
    """

    def __init__(self, label: str, total: int, every_s: float = 20.0, logger: logging.Logger = log, *,
                 unit: str = "it", bar: bool | None = None, stream: IO | None = None):
        self.label, self.total, self.every_s, self.logger = label, total, every_s, logger
        self.start = self.last = time.perf_counter()
        self.step = 0
        self._bar = None
        if bar if bar is not None else bar_wanted(stream):
            self._bar = tqdm(total=total, desc=label, unit=unit, file=stream or sys.stderr, leave=False,
                             dynamic_ncols=True, mininterval=0.5)

    def update(self, step: int, **values: float) -> None:
        """Record that ``step`` of ``total`` steps are done; ``values`` (e.g. ``loss=0.3``) are shown with it."""
        self.step = step
        if self._bar is not None:
            if values:
                self._bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()}, refresh=False)
            self._bar.update(step - self._bar.n)
            if step >= self.total:
                self.close()
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s and step < self.total:
            self.last = now
            self._emit(values)

    def advance(self, steps: int = 1, **values: float) -> None:
        """``update(step + steps)``: for work counted as it completes."""
        self.update(self.step + steps, **values)

    def track(self, items: Iterable[T]) -> Iterator[T]:
        """Yield ``items``, counting one step as the loop body for each finishes (also on ``continue``)."""
        try:
            for item in items:
                yield item
                self.advance()
        finally:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _emit(self, values: dict) -> None:
        rate = self.step / max(time.perf_counter() - self.start, 1e-9)
        extra = " ".join(f"{k} {v:.4f}" for k, v in values.items())
        self.logger.info("%s %d/%d (%.2f/s) %s", self.label, self.step, self.total, rate, extra)
