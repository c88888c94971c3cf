"""Simulated clicks: the annotator Deepgrow is trained and scored with.

The same loop as MONAI's ``deepgrow.interaction.Interaction`` (which is written for ignite
engines) run inside fedseg's engine: predict, find where prediction and label disagree
(``FindDiscrepancyRegionsd``), click inside the larger disagreement, deepest point most likely
(``AddRandomGuidanced``), redraw the click maps (``AddGuidanceSignald``), repeat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from monai.apps.deepgrow.transforms import (
    AddGuidanceSignald, AddInitialSeedPointd, AddRandomGuidanced, FindDiscrepancyRegionsd,
)

from fedseg.deepgrow.transforms import GUIDANCE
from fedseg.engine.metrics import DiceScores, metric_key
from fedseg.progress import Progress
from fedseg.tasks.spec import TaskSpec
from fedseg.transforms import IMAGE, LABEL, seed_from

PRED, DISCREPANCY, PROBABILITY = "pred", "discrepancy", "probability"
EVAL_BATCH = 8


def binary_dice(probs: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Dice of ``probs > 0.5`` against binary ``labels``, one value per sample of a (B, 1, ...) batch."""
    pred, lab = (probs > 0.5).flatten(1).float(), (labels > 0.5).flatten(1).float()
    inter, total = (pred * lab).sum(1), pred.sum(1) + lab.sum(1)
    return [1.0 if t == 0 else float(2 * i / t) for i, t in zip(inter.tolist(), total.tolist())]


@dataclass
class ClickDiceScores(DiceScores):
    """Dice per object after each scored number of clicks; the inherited scores are those after the last.

    ``as_metrics`` adds ``{prefix}_dice_click{n}`` (mean over objects) and
    ``{prefix}_dice_<object>_click{n}`` to :class:`DiceScores`' keys.
    """

    curve: dict[int, DiceScores] = field(default_factory=dict)

    def add_sample(self, obj: int, dice_after: dict[int, float]) -> None:
        """One sample of object index ``obj`` (into ``class_names``): its Dice after each click count."""
        def row(value: float) -> list[float]:
            return [value if i == obj else math.nan for i in range(len(self.class_names))]

        no_fp = [False] * len(self.class_names)
        for n, value in dice_after.items():
            self.curve.setdefault(n, DiceScores(self.class_names)).add(row(value), no_fp)
        self.add(row(dice_after[max(dice_after)]), no_fp)

    def as_metrics(self, prefix: str) -> dict[str, float]:
        out = super().as_metrics(prefix)
        for n, scores in sorted(self.curve.items()):
            out[f"{prefix}_dice_click{n}"] = scores.mean
            out.update({f"{prefix}_dice_{metric_key(k)}_click{n}": v for k, v in scores.per_class().items()})
        return out

    def curve_table(self) -> str:
        """Markdown: Dice per object (rows) after each number of clicks (columns)."""
        clicks = sorted(self.curve)
        rows = ["| object | " + " | ".join(f"{n} click{'s' if n > 1 else ''}" for n in clicks) + " | samples |",
                "|---" * (len(clicks) + 2) + "|"]
        counts = self.counts()
        for name in self.class_names:
            vals = [self.curve[n].per_class()[name] for n in clicks]
            rows.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {counts[name]} |")
        rows.append("| mean | " + " | ".join(f"{self.curve[n].mean:.3f}" for n in clicks) + f" | {self.n_cases} |")
        return "\n".join(rows)


class ClickSimulator:
    """Adds simulated clicks to batches of (image + click maps, label, guidance) for one task."""

    def __init__(self, spec: TaskSpec, seed: int = 0):
        if spec.interaction is None:
            raise ValueError(f"task {spec.name!r} is not interactive")
        self.spec, self.seed = spec, seed
        self._find = FindDiscrepancyRegionsd(label=LABEL, pred=PRED, discrepancy=DISCREPANCY)
        # Training and scoring draw from separate random states, so that scoring (which restarts
        # its own at every evaluation) never changes the clicks training gets next.
        self._train_click = AddRandomGuidanced(guidance=GUIDANCE, discrepancy=DISCREPANCY, probability=PROBABILITY)
        self._train_click.set_random_state(seed_from(seed, 1))
        self._eval_click = AddRandomGuidanced(guidance=GUIDANCE, discrepancy=DISCREPANCY, probability=PROBABILITY)
        self._signal = AddGuidanceSignald(image=IMAGE, guidance=GUIDANCE, sigma=spec.interaction.sigma)

    def click(self, images: torch.Tensor, labels: torch.Tensor, guidance: list[str], probs: torch.Tensor,
              probability: float = 1.0, *, scoring: bool = False) -> tuple[torch.Tensor, list[str]]:
        """One more click per sample (each with ``probability``), where ``probs`` disagrees with ``labels``.

        ``scoring`` draws from the evaluation's random state instead of training's.
        """
        clicker = self._eval_click if scoring else self._train_click
        new_images, new_guidance = [], []
        for b, g in enumerate(guidance):
            d = {IMAGE: images[b].cpu().numpy(), LABEL: labels[b].cpu().numpy(), GUIDANCE: g,
                 PRED: probs[b].float().cpu().numpy(), PROBABILITY: probability}
            d = self._signal(clicker(self._find(d)))
            new_images.append(torch.as_tensor(d[IMAGE]))
            new_guidance.append(d[GUIDANCE])
        return torch.stack(new_images).to(images.device), new_guidance

    @torch.no_grad()
    def interact(self, network: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 guidance: list[str]) -> torch.Tensor:
        """Before a training step: ``train_clicks`` rounds of predict-and-click, each less likely to click.

        As in MONAI's ``Interaction``, click j of n (from 0) happens with probability 1 - j/n: the
        model trains on inputs with 2 to n + 1 clicks, the seed click included.
        """
        n = self.spec.interaction.train_clicks
        was_training = network.training
        network.eval()
        for j in range(n):
            probs = torch.sigmoid(network(images))
            images, guidance = self.click(images, labels, guidance, probs, 1.0 - j / n)
        network.train(was_training)
        return images

    @torch.no_grad()
    def score(self, network: torch.nn.Module, samples: list[dict], objects: list[int], class_names: tuple[str, ...],
              device: torch.device, label: str = "evaluate") -> ClickDiceScores:
        """Dice after each of the spec's ``eval_clicks`` on preprocessed samples (first click drawn per sample)."""
        it = self.spec.interaction
        self._eval_click.set_random_state(self.seed)  # the same clicks at every evaluation
        seed_point = AddInitialSeedPointd(label=LABEL, guidance=GUIDANCE)
        scores = ClickDiceScores(class_names)
        progress = Progress(label, len(samples))
        network.eval()
        for start in range(0, len(samples), EVAL_BATCH):
            chunk = []
            for i in range(start, min(start + EVAL_BATCH, len(samples))):
                seed_point.set_random_state(seed_from(self.seed, i))
                chunk.append(self._signal(seed_point(dict(samples[i]))))
            images = torch.stack([torch.as_tensor(d[IMAGE]) for d in chunk]).to(device)
            labels = torch.stack([torch.as_tensor(d[LABEL]) for d in chunk]).to(device)
            guidance = [d[GUIDANCE] for d in chunk]
            dice: list[dict[int, float]] = [{} for _ in chunk]
            for n in range(1, it.max_eval_clicks + 1):
                probs = torch.sigmoid(network(images))
                if n in it.eval_clicks:
                    for d, v in zip(dice, binary_dice(probs, labels)):
                        d[n] = v
                if n < it.max_eval_clicks:
                    images, guidance = self.click(images, labels, guidance, probs, scoring=True)
            for k, d in enumerate(dice):
                scores.add_sample(objects[start + k], d)
            progress.update(start + len(chunk))
        return scores
