"""Transform chains for Deepgrow 2D samples, built from the task spec.

Deterministic part (cached): load the slice and its object mask, pad to at least the patch, crop
a patch-sized window centred on the object (MONAI's ``SpatialCropForegroundd``; larger objects are
cropped whole and resized down), normalise intensities. Training then draws the first click
(``AddInitialSeedPointd``) and renders the click maps (``AddGuidanceSignald``); evaluation draws
its first click itself, from a fixed seed per sample.
"""

from __future__ import annotations

import numpy as np
import torch
from monai import transforms as mt
from monai.apps.deepgrow.transforms import AddGuidanceSignald, AddInitialSeedPointd, SpatialCropForegroundd

from fedseg.tasks.spec import TaskSpec
from fedseg.transforms import IMAGE, LABEL, intensity_transform

GUIDANCE = "guidance"
KEYS = (IMAGE, LABEL)


def slice_preprocessing(spec: TaskSpec) -> list[mt.Transform]:
    """From a prepared 2D sample to a normalised, patch-sized image and binary mask (NumPy, channel first)."""
    return [
        mt.LoadImaged(KEYS, image_only=False),  # the crop records its box in the meta dicts
        mt.EnsureChannelFirstd(KEYS, channel_dim="no_channel"),
        mt.SpatialPadd(KEYS, spatial_size=spec.patch_size, mode=("replicate", "constant")),
        SpatialCropForegroundd(KEYS, source_key=LABEL, spatial_size=spec.patch_size),
        mt.Resized(KEYS, spatial_size=spec.patch_size, mode=("area", "nearest")),
        intensity_transform(spec),
        mt.SelectItemsd(KEYS),
        # The click transforms work on NumPy arrays.
        mt.EnsureTyped(KEYS, data_type="numpy", dtype=np.float32),
    ]


def first_click(spec: TaskSpec) -> list[mt.Transform]:
    """A random click inside the object (one per connected part, up to 5) and the click maps."""
    return [AddInitialSeedPointd(label=LABEL, guidance=GUIDANCE),
            AddGuidanceSignald(image=IMAGE, guidance=GUIDANCE, sigma=spec.interaction.sigma)]


def slice_train_transforms(spec: TaskSpec, seed: int = 0) -> mt.Compose:
    chain = mt.Compose(slice_preprocessing(spec) + first_click(spec)
                       + [mt.EnsureTyped(KEYS, data_type="tensor", dtype=torch.float32, track_meta=False)])
    chain.set_random_state(seed=seed)
    return chain


def slice_eval_transforms(spec: TaskSpec) -> mt.Compose:
    return mt.Compose(slice_preprocessing(spec))
