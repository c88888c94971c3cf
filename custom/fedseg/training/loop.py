"""One epoch loop for every runner: train, validate every ``val_every`` epochs, keep the best model.

Runners pass what differs as callbacks: ``before_epoch`` (reseeding and test faults on Ray
workers), ``validate`` (in-process or sharded scoring), ``after_epoch`` (save the best model,
track metrics, checkpoint, report to Ray Tune) and ``reduce_loss`` (the mean across DDP workers).
The loop imports neither nvflare nor ray.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from fedseg.engine.data import TrainData
from fedseg.engine.engine import SegmentationEngine
from fedseg.engine.hooks import TrainHooks
from fedseg.engine.metrics import DiceScores

log = logging.getLogger("fedseg")


@dataclass
class LoopState:
    """Where a run stands after some epochs; also what a checkpoint holds to continue it."""

    epoch: int = 0
    best_val_dice: float = -1.0
    best_epoch: int = 0
    best_model: dict[str, torch.Tensor] | None = None
    history: list[dict] = field(default_factory=list)
    iterations: int = 0
    learning_rate: float = 0.0

    @property
    def epoch_losses(self) -> list[float]:
        return [row["train_loss"] for row in self.history]

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "best_val_dice": self.best_val_dice, "best_epoch": self.best_epoch,
                "best_model": self.best_model, "history": list(self.history), "iterations": self.iterations,
                "learning_rate": self.learning_rate}

    @classmethod
    def from_dict(cls, saved: dict) -> "LoopState":
        return cls(**{k: saved[k] for k in ("epoch", "best_val_dice", "best_epoch", "best_model", "history")},
                   iterations=int(saved.get("iterations", 0)), learning_rate=float(saved.get("learning_rate", 0.0)))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def run_epochs(engine: SegmentationEngine, train: TrainData, *, epochs: int, state: LoopState | None = None,
               steps_per_epoch: int | None = None, progress: tuple[float, float] | None = (0.0, 1.0),
               hooks: TrainHooks | None = None, validate: Callable[[], DiceScores] | None = None,
               val_every: int = 1, keep_best: bool = True,
               before_epoch: Callable[[int], None] | None = None,
               after_epoch: Callable[[LoopState, dict, DiceScores | None], None] | None = None,
               reduce_loss: Callable[[float], float] | None = None, label: str = "train",
               log_epochs: bool = False) -> LoopState:
    """Train from ``state.epoch`` (default 0) up to ``epochs`` epochs; return the updated state.

    An epoch is one pass over ``train`` or, with ``steps_per_epoch``, that many steps (DDP workers
    must all take the same number). ``progress`` is the part of the whole run these ``epochs``
    cover: the learning rate follows the spec's schedule across it (``None``: the base rate).
    ``validate`` scores the current model after every ``val_every``-th epoch and after the last;
    a better mean than any before makes it the best (its weights kept in the state unless
    ``keep_best`` is false). Every worker of a DDP run must pass the same arguments: training,
    ``validate`` and ``reduce_loss`` are collectives there.
    Raises :class:`fedseg.errors.NonFiniteLossError` as the engine does.
    """
    if epochs < 1 or val_every < 1:
        raise ValueError(f"epochs and val_every must be at least 1, got {epochs} and {val_every}")
    state = state or LoopState()
    start, end = progress if progress is not None else (0.0, 0.0)
    while state.epoch < epochs:
        e = state.epoch
        if before_epoch is not None:
            before_epoch(e)
        t0 = time.perf_counter()
        span = (start + (end - start) * e / epochs, start + (end - start) * (e + 1) / epochs) if progress else None
        size = {"iterations": steps_per_epoch} if steps_per_epoch else {"epochs": 1}
        result = engine.train(train, progress=span, hooks=hooks, label=f"{label} epoch {e + 1}/{epochs}", **size)
        loss = _mean(result.epoch_losses)  # a small DDP shard may pass its loader more than once
        row = {"epoch": e + 1, "train_loss": reduce_loss(loss) if reduce_loss else loss,
               "learning_rate": result.learning_rate, "seconds": round(time.perf_counter() - t0, 3)}
        state.epoch, state.iterations, state.learning_rate = e + 1, state.iterations + result.iterations, result.learning_rate
        scores = None
        if validate is not None and (state.epoch % val_every == 0 or state.epoch == epochs):
            scores = validate()
            row.update(scores.as_metrics("val"))
            if not math.isnan(scores.mean) and scores.mean > state.best_val_dice:
                state.best_val_dice, state.best_epoch = scores.mean, state.epoch
                if keep_best:
                    state.best_model = engine.get_weights()
        state.history = state.history + [row]
        if log_epochs:
            shown = f" val_dice {scores.mean:.4f}" if scores is not None else ""
            log.info("%s: epoch %d/%d loss %.4f%s", label, state.epoch, epochs, row["train_loss"], shown)
        if after_epoch is not None:
            after_epoch(state, row, scores)
    return state
