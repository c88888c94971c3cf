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


def get_task(name: str, variant: str = "full", optimizer: str | None = None,
             levers: dict[str, str] | None = None) -> TaskSpec:
    """Look up a task by name and return the requested variant (``full`` or ``tiny``), optimizer choice
    and recipe levers (:data:`fedseg.tasks.spec.LEVERS`)."""
    try:
        spec = _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(_TASKS)}") from None
    spec = spec.variant(variant)
    spec = spec.with_optimizer(optimizer) if optimizer else spec
    return spec.with_levers(levers) if levers else spec


def recipe_lever(text: str) -> tuple[str, str]:
    """``NAME=CHOICE`` on a command line (argparse type), e.g. ``augment=scanner``; checked when the spec is made."""
    import argparse

    name, sep, choice = text.partition("=")
    if not (name and sep and choice):
        raise argparse.ArgumentTypeError(f"a recipe lever is NAME=CHOICE (e.g. augment=scanner), got {text!r}")
    return name, choice


__all__ = ["TaskSpec", "VARIANTS", "get_task", "recipe_lever", "task_names"]
