"""Typed task specifications.

A :class:`TaskSpec` is the single declaration of a segmentation task: what goes in, what comes
out, how volumes are preprocessed and augmented, which network, loss and optimizer train it,
and how sliding-window inference scores it. The engine, the NVFlare client, the Ray runner,
the job generator and the inference command all read the same object, so a recipe change is
made in one place.

Every task also declares a ``tiny`` variant: the same recipe with smaller patches, fewer
channels and a coarser grid, used by the CPU tests and the demo. It is derived from the full
spec by :meth:`TaskSpec.variant`, never written out twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

IntensityKind = Literal["window", "scale01", "zscore", "shift_scale"]
LossName = Literal["dice", "dicece"]
OptimizerName = Literal["novograd", "adam"]
VARIANTS = ("full", "tiny")


@dataclass(frozen=True)
class IntensitySpec:
    """How raw intensities become network input.

    ``window``: clip ``[a_min, a_max]`` (e.g. HU) and scale to 0..1.
    ``scale01``: min-max scale each volume to 0..1.
    ``zscore``: zero mean, unit std per channel (over non-zero voxels).
    ``shift_scale``: ``(x - subtrahend) / divisor``.
    """

    kind: IntensityKind
    a_min: float = 0.0
    a_max: float = 1.0
    subtrahend: float = 0.0
    divisor: float = 1.0
    # After a window and the foreground crop, also z-score each case over its voxels above the
    # window's floor (the ``intensity=case`` lever): a scanner's gain and offset cancel out.
    per_case: bool = False


@dataclass(frozen=True)
class AugmentSpec:
    """Random augmentation applied after the patch crop, each with its own probability.

    Intensities are in network units (after the task's intensity mapping: for a CT window of
    221 HU, 0.1 is about 22 HU). The scanner-like ones (scale, noise, blur, gamma) are off in the
    cards' recipes; the ``augment=scanner`` lever turns them on (see :data:`LEVERS`).
    """

    flip_prob: float = 0.0
    rotate90_prob: float = 0.0
    shift_offset: float = 0.1
    shift_prob: float = 0.5
    scale_factor: float = 0.0  # RandScaleIntensity: x * (1 + U(-f, f))
    scale_prob: float = 0.0
    noise_std: float = 0.0  # RandGaussianNoise, std drawn up to this
    noise_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.0, 0.0)  # RandGaussianSmooth: a thicker slice, a softer kernel
    blur_prob: float = 0.0
    gamma: tuple[float, float] = (1.0, 1.0)  # RandAdjustContrast
    gamma_prob: float = 0.0


@dataclass(frozen=True)
class NetworkSpec:
    """A MONAI ``UNet``: residual units per level and one stride per down-sampling."""

    spatial_dims: int
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    num_res_units: int = 2
    norm: str = "batch"

    def __post_init__(self) -> None:
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(
                f"network needs one stride per down-sampling: {len(self.channels)} channel levels "
                f"but {len(self.strides)} strides"
            )

    @property
    def downsampling(self) -> int:
        """Total down-sampling factor; patch sizes must be multiples of it."""
        factor = 1
        for s in self.strides:
            factor *= s
        return factor


@dataclass(frozen=True)
class OptimizerSpec:
    name: OptimizerName
    lr: float
    weight_decay: float = 0.0


@dataclass(frozen=True)
class InteractionSpec:
    """Click-driven (Deepgrow) training and scoring on 2D slices.

    Every training step first runs ``train_clicks`` simulated interactions (predict, find where
    prediction and label disagree, click there), as MONAI's ``deepgrow.interaction.Interaction``
    does; validation scores Dice after each of ``eval_clicks`` clicks. The input channels are the
    image followed by the positive and the negative guidance map; the output is one sigmoid channel.
    """

    train_clicks: int = 15
    eval_clicks: tuple[int, ...] = (1, 5, 10, 15)
    sigma: int = 2  # Gaussian width (pixels) of each click in the guidance maps
    min_area_mm2: float = 25.0  # slices where an object is smaller than this are not samples
    # Validation (every round) scores at most this many samples, evenly spaced through the list so
    # every object and level stays represented; the test split is always scored whole.
    max_val_samples: int | None = None

    @property
    def max_eval_clicks(self) -> int:
        return max(self.eval_clicks)


@dataclass(frozen=True)
class SmallVariant:
    """What the ``tiny`` variant changes; everything else is inherited from the full spec."""

    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    sw_roi: tuple[int, ...] | None = None  # defaults to the patch size
    channel_divisor: int = 2
    num_samples: int | None = None
    sw_batch_size: int | None = None
    optimizer: OptimizerSpec | None = None
    interaction: InteractionSpec | None = None


@dataclass(frozen=True)
class TaskSpec:
    """One segmentation task, declared once and reused by every runner.

    ``labels`` are the default class names indexed by label value (0 is background); the names
    actually reported come from the dataset's own ``dataset.json`` (see
    :func:`fedseg.data.msd.read_dataset_info`), which must have the same number of classes.
    """

    name: str
    description: str
    modality: Literal["CT", "MR"]
    in_channels: int
    labels: tuple[str, ...]
    spacing: tuple[float, ...]
    intensity: IntensitySpec
    patch_size: tuple[int, ...]
    network: NetworkSpec
    loss: LossName
    optimizer: OptimizerSpec
    sw_roi: tuple[int, ...]
    crop_foreground: bool = True
    num_samples: int = 4
    pos_neg_ratio: tuple[float, float] = (1.0, 1.0)
    # Per-class crop-centre ratios (background first); when set they replace pos_neg_ratio, so that
    # small classes (tumours) are sampled as often as large ones.
    class_crop_ratios: tuple[float, ...] | None = None
    batch_size: int = 2
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    optimizer_choices: tuple[OptimizerSpec, ...] = ()
    amp: bool = True
    # Learning rate over a whole run (all rounds, or all epochs): cosine decay to lr * min_lr_fraction.
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    min_lr_fraction: float = 0.05
    sw_overlap: float = 0.5
    sw_batch_size: int = 4
    # What a class absent from both label and prediction scores: "nan" leaves the case out of
    # that class's mean (MONAI's ignore_empty=True); "one" counts it as a perfect 1.0.
    empty_class_dice: Literal["nan", "one"] = "nan"
    # Intensity range a voxel of this modality can plausibly hold (preflight warns outside it).
    plausible_range: tuple[float, float] = (-1024.0, 3071.0)
    # Voxel spacing (mm, along every axis) a file may have; the check refuses finer or coarser files.
    spacing_range: tuple[float, float] = (0.1, 10.0)
    # Most voxels (channels included) one file may hold, before and after resampling to ``spacing``;
    # a site may set its own limit (``max_voxels`` under the task in its YAML).
    max_voxels: int = 2**28
    # Set for click-driven (Deepgrow) tasks: labels are then "background"/"object" and the class
    # names reported are the objects of the dataset's own label map.
    interaction: InteractionSpec | None = None
    small: SmallVariant | None = None
    variant_name: str = "full"
    # Recipe levers applied to this spec (with_levers), as (name, choice) pairs; () is the card's recipe.
    levers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        dims = self.network.spatial_dims
        for what, value in (("spacing", self.spacing), ("patch_size", self.patch_size), ("sw_roi", self.sw_roi)):
            if len(value) != dims:
                raise ValueError(f"task {self.name!r}: {what} {value} must have {dims} entries")
        step = self.network.downsampling
        for what, size in (("patch_size", self.patch_size), ("sw_roi", self.sw_roi)):
            if any(s % step for s in size):
                raise ValueError(f"task {self.name!r}: {what} {size} must be multiples of {step}")
        if len(self.labels) < 2:
            raise ValueError(f"task {self.name!r}: needs background and at least one class")
        if self.interactive and (self.in_channels < 3 or len(self.labels) != 2):
            raise ValueError(f"task {self.name!r}: an interactive task takes image + 2 guidance channels "
                             "and segments one object (labels background, object)")
        if self.class_crop_ratios is not None and len(self.class_crop_ratios) != len(self.labels):
            raise ValueError(f"task {self.name!r}: class_crop_ratios needs one ratio per class ({len(self.labels)})")

    @property
    def num_classes(self) -> int:
        """Output channels, background included."""
        return len(self.labels)

    @property
    def interactive(self) -> bool:
        return self.interaction is not None

    @property
    def fixed_classes(self) -> bool:
        """The spec fixes the classes (a dataset must name as many); an interactive task segments
        whatever objects its dataset labels instead."""
        return not self.interactive

    @property
    def kind(self) -> str:
        """The task's kind (:mod:`fedseg.tasks.kinds`): how its data, training and scoring work."""
        return "interactive" if self.interactive else "segmentation"

    @property
    def image_channels(self) -> int:
        """Channels of the image files (an interactive task adds two guidance maps to them)."""
        return self.in_channels - 2 if self.interactive else self.in_channels

    @property
    def out_channels(self) -> int:
        """Network output channels: one per class (softmax), or one sigmoid channel for an interactive task."""
        return 1 if self.interactive else self.num_classes

    @property
    def spatial_dims(self) -> int:
        return self.network.spatial_dims

    def variant(self, name: str) -> "TaskSpec":
        """Return the named variant: ``full`` (this recipe) or ``tiny`` (derived for CPU)."""
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
        if name == self.variant_name:
            return self
        if self.variant_name != "full":
            raise ValueError(f"variants derive from the full spec, not from {self.variant_name!r}")
        if self.small is None:
            raise ValueError(f"task {self.name!r} declares no tiny variant")
        s = self.small
        net = replace(self.network, channels=tuple(max(4, c // s.channel_divisor) for c in self.network.channels))
        return replace(
            self,
            spacing=s.spacing,
            patch_size=s.patch_size,
            sw_roi=s.sw_roi or s.patch_size,
            network=net,
            num_samples=s.num_samples or self.num_samples,
            sw_batch_size=s.sw_batch_size or self.sw_batch_size,
            optimizer=s.optimizer or self.optimizer,
            interaction=s.interaction or self.interaction,
            variant_name=name,
        )

    def with_optimizer(self, name: str) -> "TaskSpec":
        """Switch to one of the declared optimizer choices (e.g. the older card's Adam)."""
        if name == self.optimizer.name:
            return self
        for choice in self.optimizer_choices:
            if choice.name == name:
                return replace(self, optimizer=choice)
        allowed = sorted({self.optimizer.name, *(c.name for c in self.optimizer_choices)})
        raise ValueError(f"task {self.name!r}: optimizer {name!r} not offered; choose one of {', '.join(allowed)}")

    def with_levers(self, levers: "dict[str, str] | None") -> "TaskSpec":
        """This recipe with the named levers (:data:`LEVERS`) set; ``card`` choices leave it as it is."""
        spec = self
        for name, choice in sorted((levers or {}).items()):
            if name not in LEVERS:
                raise ValueError(f"unknown recipe lever {name!r}; choose from {', '.join(LEVERS)}")
            if choice not in LEVERS[name]:
                raise ValueError(f"recipe lever {name!r} has no choice {choice!r}; choose from "
                                 f"{', '.join(LEVERS[name])}")
            spec = LEVERS[name][choice](spec)
        chosen = tuple(sorted((k, v) for k, v in (levers or {}).items() if v != "card" and v != DEFAULTS.get(k)))
        return replace(spec, levers=chosen)

    @property
    def foreground_labels(self) -> tuple[str, ...]:
        return self.labels[1:]

    def lr_at(self, progress: float) -> float:
        """Learning rate at ``progress`` (0 = start, 1 = end) of a run."""
        base = self.optimizer.lr
        if self.lr_schedule == "constant":
            return base
        p = min(max(progress, 0.0), 1.0)
        floor = base * self.min_lr_fraction
        return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * p))


def _scanner_augment(spec: "TaskSpec") -> "TaskSpec":
    """Augmentation covering what scanners differ by (fedseg.data.scanner's site profiles: intensity
    offset +-40 HU and gain 0.9-1.1, noise up to 30 HU, slice thickness 1.5-5 mm), in network units.

    For a CT window 1 unit is the window's width in HU; otherwise (z-scored MR) 100 "HU" count as
    one standard deviation, so the same shares of the intensity spread are used.
    """
    width = spec.intensity.a_max - spec.intensity.a_min if spec.intensity.kind == "window" else 100.0

    def hu(value: float) -> float:
        return value / width

    return replace(spec, augment=replace(
        spec.augment, shift_offset=max(spec.augment.shift_offset, hu(40.0)), shift_prob=max(spec.augment.shift_prob, 0.5),
        scale_factor=0.1, scale_prob=0.5, noise_std=hu(30.0), noise_prob=0.3, blur_sigma=(0.5, 1.5), blur_prob=0.3,
        gamma=(0.8, 1.25), gamma_prob=0.3))


def _norm(kind: str):
    return lambda spec: replace(spec, network=replace(spec.network, norm=kind))


def _per_case_intensity(spec: "TaskSpec") -> "TaskSpec":
    """The window, then each case standardised on its own tissue (see :class:`IntensitySpec`)."""
    if spec.intensity.kind != "window":
        raise ValueError(f"recipe lever intensity=case applies to a CT window; task {spec.name!r} uses "
                         f"{spec.intensity.kind!r}, which is already per case or fixed by design")
    return replace(spec, intensity=replace(spec.intensity, per_case=True))


def _half_batch(spec: "TaskSpec") -> "TaskSpec":
    """Half the volumes per step: twice the optimizer steps per epoch. On 2 equal sites a FedAvg round
    then moves the global model as many steps as the pooled run takes over the same epochs."""
    return replace(spec, batch_size=max(1, spec.batch_size // 2))


# Recipe levers: named, declared alternatives to parts of a card's recipe, chosen per run or job
# (``--recipe augment=scanner``). "card"/the default choice is the recipe as declared.
LEVERS: dict = {
    "augment": {"card": lambda spec: spec, "scanner": _scanner_augment},
    "norm": {"batch": _norm("batch"), "instance": _norm("instance")},
    "batch": {"card": lambda spec: spec, "half": _half_batch},
    "intensity": {"card": lambda spec: spec, "case": _per_case_intensity},
}
DEFAULTS = {"augment": "card", "norm": "batch", "batch": "card", "intensity": "card"}
# Levers that change the network's structure: the server must build the same network.
NETWORK_LEVERS = ("norm",)
