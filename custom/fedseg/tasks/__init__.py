"""Task registry: every task is declared once in its own module and looked up by name here.

A task module declares ``TASK`` (its :class:`TaskSpec`), ``PHANTOM`` (how its phantoms are drawn,
:class:`~fedseg.tasks.parts.PhantomSpec`) and ``SCHEDULE`` (its committed FL job's rounds and
epochs, :class:`~fedseg.tasks.parts.FLSchedule`); adding a task is a new module plus one entry in
``_MODULES``.
"""

from __future__ import annotations

from types import ModuleType

from fedseg.tasks import deepgrow, liver, prostate, spleen
from fedseg.tasks.parts import FLSchedule, PhantomSpec
from fedseg.tasks.spec import VARIANTS, TaskSpec

_MODULES: dict[str, ModuleType] = {m.TASK.name: m for m in (spleen, liver, prostate, deepgrow)}
_TASKS: dict[str, TaskSpec] = {name: m.TASK for name, m in _MODULES.items()}


def task_names() -> tuple[str, ...]:
    return tuple(_TASKS)


def _module(name: str) -> ModuleType:
    try:
        return _MODULES[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(_MODULES)}") from None


def task_phantom(name: str) -> PhantomSpec:
    """How ``fedseg data synth`` draws the task's phantoms."""
    return _module(name).PHANTOM


def phantom_labels(name: str) -> tuple[str, ...]:
    """The label names the task's phantoms' ``dataset.json`` gives: the phantom's own, else the spec's."""
    module = _module(name)
    return module.PHANTOM.labels or module.TASK.labels


def task_schedule(name: str) -> FLSchedule:
    """The task's committed FL job schedule."""
    return _module(name).SCHEDULE


def get_task(name: str, variant: str = "full", optimizer: str | None = None,
             levers: dict[str, str] | None = None) -> TaskSpec:
    """Look up a task by name and return the requested variant (``full`` or ``tiny``), optimizer choice
    and recipe levers (:data:`fedseg.tasks.spec.LEVERS`)."""
    spec = _module(name).TASK.variant(variant)
    spec = spec.with_optimizer(optimizer) if optimizer else spec
    return spec.with_levers(levers) if levers else spec


def recipe_lever(text: str) -> tuple[str, str]:
    """``NAME=CHOICE`` on a command line (argparse type), e.g. ``augment=scanner``; checked when the spec is made."""
    import argparse

    name, sep, choice = text.partition("=")
    if not (name and sep and choice):
        raise argparse.ArgumentTypeError(f"a recipe lever is NAME=CHOICE (e.g. augment=scanner), got {text!r}")
    return name, choice


__all__ = ["FLSchedule", "PhantomSpec", "TaskSpec", "VARIANTS", "get_task", "phantom_labels", "recipe_lever",
           "task_names", "task_phantom", "task_schedule"]
