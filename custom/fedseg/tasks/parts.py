"""What a task module declares besides its :class:`~fedseg.tasks.spec.TaskSpec`.

A task module (``tasks/<name>.py``) holds three things: the spec, how ``fedseg data synth`` draws
its phantoms (:class:`PhantomSpec`) and its default FL schedule (:class:`FLSchedule`). The phantom
registry (:mod:`fedseg.data.synth`) and the committed-job table (:mod:`fedseg.flare.jobs`) are
derived from the task registry, so a new task is one new file plus one line in
:mod:`fedseg.tasks`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PhantomSpec:
    """How a task's phantoms are drawn and what their ``dataset.json`` says.

    ``body`` is the phantom generator (``abdomen`` CT or ``pelvis`` MRI). For abdominal phantoms,
    ``organs`` maps phantom organ names (:data:`fedseg.data.phantoms.abdomen.ORGANS`) to label
    values, several organs may share a value (liver tumours counted as liver), and ``tumours`` is
    the (min, max) number of liver tumours a case draws. ``labels`` defaults to the task spec's;
    tasks whose classes are the dataset's objects (Deepgrow) name them here.
    """

    dataset_name: str
    description: str
    body: str = "abdomen"
    modalities: tuple[str, ...] = ("CT",)
    organs: tuple[tuple[str, int], ...] = ()
    tumours: tuple[int, int] = (0, 0)
    labels: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.body not in ("abdomen", "pelvis"):
            raise ValueError(f"phantom body must be 'abdomen' or 'pelvis', got {self.body!r}")
        if self.body == "abdomen" and not self.organs:
            raise ValueError(f"abdominal phantoms {self.dataset_name!r} must name the organs they label")


@dataclass(frozen=True)
class FLSchedule:
    """A task's committed FL job schedule: rounds and local epochs per round."""

    num_rounds: int = 20
    local_epochs: int = 6
