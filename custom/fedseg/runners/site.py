"""A site's local trainer: what one FL round (or a single-site run) asks of a site.

The NVFlare client talks to this interface only, so a site can train in-process
(:class:`LocalSiteTrainer`) or on its own Ray cluster (``fedseg.ray.trainer.RaySiteTrainer``)
without the job changing; :mod:`fedseg.backends` maps the YAML's ``backend:`` to one of them.
"""

from __future__ import annotations

import copy
from typing import Mapping, Protocol

from fedseg.engine import DiceScores, Runtime, SegmentationEngine, TrainResult
from fedseg.engine.hooks import RoundHooks
from fedseg.site_data import SiteData
from fedseg.training.loop import run_epochs

GLOBAL = "global"


class SiteTrainer(Protocol):
    def train(self, weights: Mapping, epochs: int, progress: tuple[float, float] | None = None,
              hooks: RoundHooks | None = None, slot: str = GLOBAL) -> TrainResult:
        """Train from ``weights`` for ``epochs``; ``hooks`` are an FL algorithm's for this round.

        ``slot`` names the optimizer state to continue: the model the federation trains (``global``)
        or another one the site keeps (e.g. Ditto's personalised model), each with its own state.
        """
        ...

    def evaluate(self, weights: Mapping, split: str) -> DiceScores: ...

    def close(self) -> None: ...


class OptimizerSlots:
    """One optimizer state per slot, swapped in and out of one optimizer (a new slot starts fresh)."""

    def __init__(self, optimizer):
        self._optimizer = optimizer
        self._fresh = copy.deepcopy(optimizer.state_dict())
        self._saved: dict[str, dict] = {}
        self._current = GLOBAL

    def use(self, slot: str) -> None:
        if slot == self._current:
            return
        self._saved[self._current] = copy.deepcopy(self._optimizer.state_dict())
        self._optimizer.load_state_dict(self._saved.get(slot, self._fresh))
        self._current = slot


class LocalSiteTrainer:
    """Trains in this process; caches each split's preprocessed volumes across rounds."""

    def __init__(self, data: SiteData, runtime: Runtime, seed: int = 0):
        self.data = data
        self.engine = SegmentationEngine(data.spec, runtime, class_names=data.class_names, seed=seed)
        self._slots = OptimizerSlots(self.engine.optimizer)
        self._train = None
        self._eval = {}

    def train(self, weights: Mapping, epochs: int, progress: tuple[float, float] | None = None,
              hooks: RoundHooks | None = None, slot: str = GLOBAL) -> TrainResult:
        engine = self.engine
        if self._train is None:
            self._train = engine.train_data(self.data.items("training"))
        self._slots.use(slot)
        engine.set_weights(weights)
        state = run_epochs(engine, self._train, epochs=epochs, progress=progress,
                           hooks=hooks.build(engine) if hooks else None,
                           label=f"fedseg {self.data.site.site} train{'' if slot == GLOBAL else ' ' + slot}")
        extras = hooks.finish(engine) if hooks else {}
        return TrainResult(engine.get_weights(), self._train.n_cases, state.iterations, state.epoch_losses,
                           state.learning_rate, extras)

    def evaluate(self, weights: Mapping, split: str) -> DiceScores:
        if split not in self._eval:
            self._eval[split] = self.engine.eval_data(self.data.items(split))
        return self.engine.evaluate(self._eval[split], weights=weights, label=f"fedseg {self.data.site.site} {split}")

    def close(self) -> None:
        self._train, self._eval = None, {}
