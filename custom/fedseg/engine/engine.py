"""The training and evaluation engine shared by every runner (NVFlare client, Ray, local).

It imports neither nvflare nor ray: runners hand it weights and data and get weights and
metrics back.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from fedseg.engine.components import build_loss, build_optimizer
from fedseg.engine.data import EvalData, TrainData, make_eval_data, make_train_data
from fedseg.engine.hooks import NO_HOOKS, TrainHooks
from fedseg.engine.metrics import DiceScores, case_dice
from fedseg.engine.runtime import Runtime, seed_everything
from fedseg.errors import NonFiniteLossError
from fedseg.networks import build_network
from fedseg.progress import Progress
from fedseg.tasks.kinds import task_kind
from fedseg.tasks.spec import TaskSpec
from fedseg.transforms import seed_from

log = logging.getLogger("fedseg")


@dataclass
class TrainResult:
    """What one call to :meth:`SegmentationEngine.train` produced."""

    weights: dict[str, torch.Tensor]
    n_samples: int  # training cases: the weight of this update in FedAvg
    iterations: int
    epoch_losses: list[float] = field(default_factory=list)
    learning_rate: float = 0.0
    # What the round's fedseg.engine.hooks.RoundHooks handed back (e.g. SCAFFOLD's new controls).
    extras: dict = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        return self.epoch_losses[-1] if self.epoch_losses else float("nan")


def to_state_dict(weights: Mapping) -> dict[str, torch.Tensor]:
    """Accept tensors or NumPy arrays (as NVFlare may deliver them)."""
    return {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for k, v in weights.items()}


class SegmentationEngine:
    """Trains and scores one task's network on one device; holds model and optimizer across calls."""

    def __init__(self, spec: TaskSpec, runtime: Runtime, *, class_names: tuple[str, ...] | None = None,
                 seed: int = 0):
        # An interactive task's classes are the dataset's objects, however many it labels.
        if class_names is not None and spec.fixed_classes and len(class_names) != spec.num_classes:
            raise ValueError(f"task {spec.name!r} has {spec.num_classes} classes, got names {class_names}")
        self.spec, self.runtime, self.seed = spec, runtime, seed
        self.class_names = tuple(class_names or spec.labels)
        seed_everything(seed, deterministic=runtime.deterministic)
        self.memory_format = runtime.memory_format(spec.spatial_dims)
        # Parameters in the activations' layout: every convolution then runs in it without reorders.
        self.model = build_network(spec).to(runtime.device, memory_format=self.memory_format)
        self.optimizer = build_optimizer(spec, self.model.parameters())
        self.loss_fn = build_loss(spec)
        # A task may turn mixed precision off (spec.amp); loss scaling only for fp16 (bf16 has fp32's range).
        self._autocast = runtime.autocast if spec.amp else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler("cuda", enabled=spec.amp and runtime.precision == "fp16")
        self._data_seeds = 0
        # What the task's kind changes in a step and in scoring (Deepgrow: simulated clicks).
        self.session = task_kind(spec).session(spec, seed)

    # Data -----------------------------------------------------------------------------------------
    def train_data(self, items: list[dict]) -> TrainData:
        self._data_seeds += 1
        return make_train_data(self.spec, items, self.runtime, seed_from(self.seed, self._data_seeds))

    def eval_data(self, items: list[dict]) -> EvalData:
        return make_eval_data(self.spec, items, self.runtime)

    # Weights --------------------------------------------------------------------------------------
    @property
    def network(self) -> torch.nn.Module:
        """The bare network, also when :attr:`model` is wrapped (e.g. in DistributedDataParallel)."""
        return getattr(self.model, "module", self.model)

    def wrap_model(self, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        """Train through ``wrap(model)`` (e.g. DDP) from now on; the optimizer keeps the same parameters.

        Weights and inference keep using the bare network: its keys carry no ``module.`` prefix,
        and a DDP forward outside training would start collectives the other workers never join.
        """
        self.model = wrap(self.network)

    def get_weights(self) -> dict[str, torch.Tensor]:
        # Contiguous copies whatever layout the network runs in: files and FL updates stay plain.
        return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                for k, v in self.network.state_dict().items()}

    def set_weights(self, weights: Mapping) -> None:
        self.network.load_state_dict(to_state_dict(weights), strict=True)

    # Training -------------------------------------------------------------------------------------
    def train(self, data: TrainData, *, epochs: int | None = None, iterations: int | None = None,
              weights: Mapping | None = None, progress: tuple[float, float] | None = None,
              label: str = "train", hooks: TrainHooks | None = None) -> TrainResult:
        """Train from ``weights`` (or the current ones) for ``epochs`` passes or ``iterations`` steps.

        ``progress`` is the part of the whole run this call covers (e.g. round r of R is
        ``(r/R, (r+1)/R)``); the learning rate follows the spec's schedule across it. Without it
        the rate stays at the spec's base value.
        ``hooks`` (an FL algorithm's) add a term to every step's loss and act after every optimizer step.
        Raises :class:`NonFiniteLossError` on a NaN or infinite loss; the weights are then unusable.
        """
        if (epochs is None) == (iterations is None):
            raise ValueError("give exactly one of epochs or iterations")
        if weights is not None:
            self.set_weights(weights)
        per_epoch = data.batches_per_epoch
        total = iterations if iterations is not None else epochs * per_epoch
        n_epochs = math.ceil(total / per_epoch)
        device = self.runtime.device
        start, end = progress if progress is not None else (0.0, 0.0)
        schedule = (lambda i: self.spec.lr_at(start + (end - start) * i / total)) if progress else None
        reporter = Progress(label, total)
        hooks = hooks or NO_HOOKS
        self.model.train()
        step, losses = 0, []
        for epoch in range(n_epochs):
            running, count = 0.0, 0
            for batch in data.loader:
                x = batch["image"].to(device, non_blocking=True)
                y = batch["label"].to(device, non_blocking=True)
                x = self.session.training_input(self.network, x, y, batch)
                if schedule is not None:
                    self._set_lr(schedule(step))
                self.optimizer.zero_grad(set_to_none=True)
                with self._autocast():
                    loss = self.loss_fn(self.model(x), y)
                    if hooks.loss_term is not None:
                        loss = loss + hooks.loss_term(self.network)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise NonFiniteLossError(epoch, step, value)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if hooks.after_step is not None:
                    hooks.after_step(self.network, self.optimizer.param_groups[0]["lr"])
                running, count, step = running + value, count + 1, step + 1
                reporter.update(step, loss=value)
                if step >= total:
                    break
            losses.append(running / max(count, 1))
            if step >= total:
                break
        return TrainResult(self.get_weights(), data.n_cases, step, losses, self.optimizer.param_groups[0]["lr"])

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # Inference and evaluation ---------------------------------------------------------------------
    @torch.inference_mode()
    def predict_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Sliding-window logits for one preprocessed image of shape (C, *spatial)."""
        network = self.network
        network.eval()
        spec = self.spec
        with self._autocast():
            logits = sliding_window_inference(
                image.unsqueeze(0).to(self.runtime.device), roi_size=spec.sw_roi, sw_batch_size=spec.sw_batch_size,
                predictor=network, overlap=spec.sw_overlap, mode="gaussian",
            )
        return logits[0].float()

    def evaluate(self, data: EvalData, *, weights: Mapping | None = None, label: str = "evaluate") -> DiceScores:
        """Dice per foreground class for every case of ``data``."""
        if weights is not None:
            self.set_weights(weights)
        return self.session.evaluate(self, data, label)

    def evaluate_volumes(self, data: EvalData, label: str = "evaluate") -> DiceScores:
        """Sliding-window Dice per foreground class for every volume of ``data`` at the current weights."""
        scores = DiceScores(self.class_names[1:])
        progress = Progress(label, data.n_cases)
        for i in range(len(data.dataset)):
            item = data.dataset[i]
            # torch.max(...).indices: the same as argmax, which is 10-50x slower on CPU (torch 2.13).
            pred = torch.max(self.predict_logits(item["image"]), 0, keepdim=True).indices
            label_map = item["label"].to(pred.device)
            scores.add(*case_dice(pred.unsqueeze(0), label_map.unsqueeze(0), self.spec.num_classes,
                                  self.spec.empty_class_dice))
            progress.update(i + 1)
        return scores
