"""Per-class Dice, named after the dataset's classes and aggregated over cases."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot


def metric_key(name: str) -> str:
    """A class name as a metric-key fragment: ``Liver tumour`` -> ``liver_tumour``."""
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_") or "class"


def case_dice(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
              empty_class_dice: str) -> tuple[list[float], list[bool]]:
    """Dice of each foreground class for one case, and whether each class is a false positive.

    ``pred`` and ``label`` are (1, 1, ...) class-index maps. A class absent from the label scores
    NaN under the ``"nan"`` rule (left out of that class's mean); under ``"one"`` it scores 1.0
    when the prediction is empty too and 0.0 otherwise. Either way, predicting a class the label
    does not have is flagged as a false-positive case.
    """
    pred_1h, label_1h = one_hot(pred, num_classes), one_hot(label, num_classes)
    dice = compute_dice(pred_1h, label_1h, include_background=False, ignore_empty=(empty_class_dice == "nan"))
    dims = tuple(range(2, pred_1h.dim()))
    in_label, in_pred = label_1h.sum(dims)[0, 1:] > 0, pred_1h.sum(dims)[0, 1:] > 0
    false_pos = (in_pred & ~in_label).tolist()
    return [float(v) for v in dice[0]], [bool(f) for f in false_pos]


def _nanmean(values) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


@dataclass
class DiceScores:
    """Dice per case and foreground class; names come from ``dataset.json``."""

    class_names: tuple[str, ...]
    per_case: list[list[float]] = field(default_factory=list)
    false_positive: list[list[bool]] = field(default_factory=list)

    def add(self, dice: list[float], false_positive: list[bool]) -> None:
        self.per_case.append(dice)
        self.false_positive.append(false_positive)

    @property
    def n_cases(self) -> int:
        return len(self.per_case)

    def per_class(self) -> dict[str, float]:
        return {name: _nanmean(case[i] for case in self.per_case) for i, name in enumerate(self.class_names)}

    def false_positives(self) -> dict[str, int]:
        """Cases whose label lacks a class that the prediction has (tumour hallucinated in a clean liver)."""
        return {name: sum(case[i] for case in self.false_positive) for i, name in enumerate(self.class_names)}

    def counts(self) -> dict[str, int]:
        """Cases that scored each class (NaN cases excluded), needed to pool sites exactly."""
        return {name: sum(not math.isnan(case[i]) for case in self.per_case) for i, name in enumerate(self.class_names)}

    @property
    def mean(self) -> float:
        """Mean over classes of the per-class means (a class with no scored case is left out)."""
        return _nanmean(self.per_class().values())

    def as_metrics(self, prefix: str) -> dict[str, float]:
        """Flat metrics for NVFlare or JSON.

        ``{prefix}_dice`` (mean over classes), ``{prefix}_dice_<class>``, ``{prefix}_n_<class>`` (cases
        scored for the class), ``{prefix}_fp_<class>`` (false-positive cases) and ``{prefix}_cases``.
        Numbers only: nothing that names a case.
        """
        out = {f"{prefix}_dice": self.mean}
        out.update({f"{prefix}_dice_{metric_key(n)}": v for n, v in self.per_class().items()})
        out.update({f"{prefix}_n_{metric_key(n)}": float(c) for n, c in self.counts().items()})
        out.update({f"{prefix}_fp_{metric_key(n)}": float(c) for n, c in self.false_positives().items()})
        out[f"{prefix}_cases"] = float(self.n_cases)
        return out
