"""What the Ray driver hands every worker: typed, frozen, picklable (``train_loop_config={"cfg": ...}``)."""

from __future__ import annotations

from dataclasses import dataclass

from fedseg.engine.hooks import RoundHooks
from fedseg.tasks.spec import TaskSpec


@dataclass(frozen=True)
class WorkerRuntime:
    """A worker's share of the machine and the site's data-loading settings."""

    threads: int
    num_workers: int = 0
    cache_rate: float = 1.0
    precision: str = "auto"


@dataclass(frozen=True)
class RunSettings:
    """``fedseg train --backend ray``: a whole run with validation, checkpoints and test scoring."""

    run_id: str
    epochs: int
    val_every: int
    val_items: list[dict]
    test_items: dict[str, list[dict]]


@dataclass(frozen=True)
class RoundSettings:
    """One FL round of a ``backend: ray`` site: from the received weights, with the algorithm's hooks."""

    weights: dict
    optimizer: dict | None
    epochs: int
    progress: tuple[float, float] | None
    label: str
    hooks: RoundHooks | None = None


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs; exactly one of ``run`` and ``round`` is set."""

    spec: TaskSpec
    class_names: tuple[str, ...]
    seed: int
    use_gpu: bool
    runtime: WorkerRuntime
    train_items: list[dict]
    steps_per_epoch: int
    run: RunSettings | None = None
    round: RoundSettings | None = None
    fault: str | None = None  # FEDSEG_RAY_FAULT, tests only (fedseg.ray.common.Fault)
    fault_dir: str | None = None

    def __post_init__(self) -> None:
        if (self.run is None) == (self.round is None):
            raise ValueError("a worker runs either a whole run or one FL round")
