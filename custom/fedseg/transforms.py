"""MONAI transform chains built from a :class:`~fedseg.tasks.spec.TaskSpec`.

One deterministic preprocessing chain (load, channel first, RAS, resample, intensity, foreground
crop) is shared by training, evaluation and inference, so the three can never disagree; training
appends the random patch crop and augmentation. ``CacheDataset`` caches everything up to the
first random transform.
"""

from __future__ import annotations

import numpy as np
import torch
from monai import transforms as mt

from fedseg.tasks.spec import TaskSpec

IMAGE, LABEL = "image", "label"


def intensity_transform(spec: TaskSpec) -> mt.MapTransform:
    """The task's intensity normalisation as a dictionary transform on the image."""
    it = spec.intensity
    if it.kind == "window":
        return mt.ScaleIntensityRanged(IMAGE, a_min=it.a_min, a_max=it.a_max, b_min=0.0, b_max=1.0, clip=True)
    if it.kind == "scale01":
        return mt.ScaleIntensityd(IMAGE, minv=0.0, maxv=1.0)
    if it.kind == "zscore":
        return mt.NormalizeIntensityd(IMAGE, nonzero=True, channel_wise=True)
    if it.kind == "shift_scale":
        return mt.NormalizeIntensityd(IMAGE, subtrahend=it.subtrahend, divisor=it.divisor)
    raise ValueError(f"unknown intensity kind {it.kind!r}")


def preprocessing(spec: TaskSpec, *, with_label: bool = True, track_meta: bool = False) -> list[mt.Transform]:
    """Deterministic steps from file to network grid.

    ``track_meta=False`` drops MONAI's metadata after preprocessing, which makes cached training
    and validation faster; inference keeps it to map predictions back onto the input's grid.
    """
    keys = [IMAGE, LABEL] if with_label else [IMAGE]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    steps: list[mt.Transform] = [
        mt.LoadImaged(keys, image_only=True, ensure_channel_first=True),
        mt.Orientationd(keys, axcodes="RAS"[: spec.spatial_dims], labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        mt.Spacingd(keys, pixdim=spec.spacing, mode=modes),
    ]
    crop = mt.CropForegroundd(keys, source_key=IMAGE, allow_smaller=True, start_coord_key=None, end_coord_key=None)
    # The crop keeps voxels above 0. After a CT window that means "above the window's floor"; a
    # z-scored image is negative in half the body, so MR is cropped on its raw (non-negative) signal.
    if spec.crop_foreground and spec.intensity.kind == "zscore":
        steps.append(crop)
    steps.append(intensity_transform(spec))
    if spec.crop_foreground and spec.intensity.kind != "zscore":
        steps.append(crop)
    if spec.intensity.per_case:  # on the window's 0..1, above its floor: air and fat stay 0
        steps.append(mt.NormalizeIntensityd(IMAGE, nonzero=True))
    dtypes = (torch.float32, torch.uint8) if with_label else (torch.float32,)
    steps.append(mt.EnsureTyped(keys, dtype=dtypes, track_meta=track_meta))
    return steps


def augmentation(spec: TaskSpec) -> list[mt.Transform]:
    """Random patch sampling (foreground:background as the spec says) and augmentation."""
    keys = [IMAGE, LABEL]
    # Crop centres lie where the image is above 0: after a CT window, above its floor (not in air or
    # fat). A case z-scored on its tissue is below 0 in half of it, darker organs and tumours
    # included, so there every voxel of the foreground-cropped volume may be a centre.
    threshold = float("-inf") if spec.intensity.per_case else 0.0
    if spec.class_crop_ratios is not None:
        crop = mt.RandCropByLabelClassesd(keys, label_key=LABEL, spatial_size=spec.patch_size,
                                          ratios=list(spec.class_crop_ratios), num_classes=spec.num_classes,
                                          num_samples=spec.num_samples, image_key=IMAGE, image_threshold=threshold,
                                          warn=False)
    else:
        pos, neg = spec.pos_neg_ratio
        crop = mt.RandCropByPosNegLabeld(keys, label_key=LABEL, spatial_size=spec.patch_size, pos=pos, neg=neg,
                                         num_samples=spec.num_samples, image_key=IMAGE, image_threshold=threshold)
    # Volumes smaller than a patch are padded so that every crop has the patch's shape.
    steps: list[mt.Transform] = [mt.SpatialPadd(keys, spatial_size=spec.patch_size), crop]
    aug = spec.augment
    if aug.flip_prob > 0:
        steps += [mt.RandFlipd(keys, prob=aug.flip_prob, spatial_axis=axis) for axis in range(spec.spatial_dims)]
    if aug.rotate90_prob > 0:
        steps.append(mt.RandRotate90d(keys, prob=aug.rotate90_prob, max_k=3, spatial_axes=(0, 1)))
    if aug.shift_prob > 0:
        steps.append(mt.RandShiftIntensityd(IMAGE, offsets=aug.shift_offset, prob=aug.shift_prob))
    # What scanners differ by (the augment=scanner lever; off in the cards' recipes).
    if aug.scale_prob > 0:
        steps.append(mt.RandScaleIntensityd(IMAGE, factors=aug.scale_factor, prob=aug.scale_prob))
    if aug.noise_prob > 0:
        steps.append(mt.RandGaussianNoised(IMAGE, std=aug.noise_std, prob=aug.noise_prob, sample_std=True))
    if aug.blur_prob > 0:
        steps.append(mt.RandGaussianSmoothd(IMAGE, sigma_x=aug.blur_sigma, sigma_y=aug.blur_sigma,
                                            sigma_z=aug.blur_sigma, prob=aug.blur_prob))
    if aug.gamma_prob > 0:
        steps.append(mt.RandAdjustContrastd(IMAGE, gamma=aug.gamma, prob=aug.gamma_prob))
    return steps


def train_transforms(spec: TaskSpec, seed: int = 0, device: torch.device | None = None) -> mt.Compose:
    """Preprocessing then augmentation; with ``device`` the cached volumes move there first, so that
    the random crops and augmentation run on it (MONAI's fast-training guide, for CUDA)."""
    to_device = [] if device is None else [mt.EnsureTyped([IMAGE, LABEL], device=device, track_meta=False)]
    chain = mt.Compose(preprocessing(spec) + to_device + augmentation(spec))
    chain.set_random_state(seed=seed)
    return chain


def eval_transforms(spec: TaskSpec, *, with_label: bool = True, track_meta: bool = False) -> mt.Compose:
    return mt.Compose(preprocessing(spec, with_label=with_label, track_meta=track_meta))


def seed_from(*parts: int) -> int:
    """A 32-bit seed mixed from several integers (e.g. run seed and round number)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
