"""Task registry: every task is declared once in its own module and looked up by name here."""

from __future__ import annotations

from fedseg.tasks.spec import VARIANTS, TaskSpec
from fedseg.tasks.deepgrow import DEEPGROW2D
from fedseg.tasks.liver import LIVER
from fedseg.tasks.prostate import PROSTATE
from fedseg.tasks.spleen import SPLEEN

_TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (SPLEEN, LIVER, PROSTATE, DEEPGROW2D)}


def task_names() -> tuple[str, ...]:
    return tuple(_TASKS)


def get_task(name: str, variant: str = "full", optimizer: str | None = None) -> TaskSpec:
    """Look up a task by name and return the requested variant (``full`` or ``tiny``)."""
    try:
        spec = _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(_TASKS)}") from None
    spec = spec.variant(variant)
    return spec.with_optimizer(optimizer) if optimizer else spec


__all__ = ["TaskSpec", "VARIANTS", "get_task", "task_names"]
