"""A site's local trainer: what one FL round (or a single-site run) asks of a site.

The NVFlare client talks to this interface only, so a site can train in-process
(:class:`LocalSiteTrainer`) or on its own Ray cluster (``fedseg.ray.trainer.RaySiteTrainer``)
without the job changing.
"""

from __future__ import annotations

from typing import Mapping, Protocol

from fedseg.engine import DiceScores, Runtime, SegmentationEngine, TrainResult
from fedseg.site_data import SiteData


class SiteTrainer(Protocol):
    def train(self, weights: Mapping, epochs: int, progress: tuple[float, float] | None = None,
              regularizer=None) -> TrainResult: ...

    def evaluate(self, weights: Mapping, split: str) -> DiceScores: ...

    def close(self) -> None: ...


class LocalSiteTrainer:
    """Trains in this process; caches each split's preprocessed volumes across rounds."""

    def __init__(self, data: SiteData, runtime: Runtime, seed: int = 0):
        self.data = data
        self.engine = SegmentationEngine(data.spec, runtime, class_names=data.class_names, seed=seed)
        self._train = None
        self._eval = {}

    def train(self, weights: Mapping, epochs: int, progress: tuple[float, float] | None = None,
              regularizer=None) -> TrainResult:
        if self._train is None:
            self._train = self.engine.train_data(self.data.items("training"))
        return self.engine.train(self._train, epochs=epochs, weights=weights, progress=progress,
                                 label=f"fedseg {self.data.site.site} train", regularizer=regularizer)

    def evaluate(self, weights: Mapping, split: str) -> DiceScores:
        if split not in self._eval:
            self._eval[split] = self.engine.eval_data(self.data.items(split))
        return self.engine.evaluate(self._eval[split], weights=weights, label=f"fedseg {self.data.site.site} {split}")

    def close(self) -> None:
        self._train, self._eval = None, {}


def make_site_trainer(data: SiteData, runtime: Runtime, seed: int = 0) -> SiteTrainer:
    """The trainer the site's YAML asks for (``backend: local`` or ``ray``)."""
    if data.site.backend == "ray":
        from fedseg.ray.trainer import RaySiteTrainer  # optional extra: imported only when asked for

        return RaySiteTrainer(data, runtime, seed=seed)
    return LocalSiteTrainer(data, runtime, seed=seed)
