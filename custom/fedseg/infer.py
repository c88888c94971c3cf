"""``fedseg infer``: segment a volume and write the mask on the input's own grid.

The image goes through the task's evaluation preprocessing (RAS, training spacing, intensity,
foreground crop); class probabilities from sliding-window inference are resampled back onto the
input's voxel grid through the affines (so any input orientation works), and the argmax is
written as a uint8 mask with the input's affine.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, ResampleToMatch

from fedseg.checkpoint import load_model
from fedseg.data.checks import check_image_file
from fedseg.engine import Runtime, SegmentationEngine
from fedseg.tasks.spec import TaskSpec
from fedseg.transforms import IMAGE, eval_transforms


def check_input(path: Path, spec: TaskSpec) -> None:
    """Refuse an input the task cannot use (unreadable, wrong dimensions or channels) before inference."""
    check_image_file(Path(path), spec).raise_if_fatal(f"cannot segment {path} with task {spec.name!r}", "inference")


class Predictor:
    """A task's model ready to segment files; reuse it for many volumes."""

    def __init__(self, spec: TaskSpec, model_path: Path, runtime: Runtime | None = None):
        self.spec = spec
        self.engine = SegmentationEngine(spec, runtime or Runtime.create("auto"))
        self.engine.set_weights(load_model(model_path, spec))
        self.preprocess = eval_transforms(spec, with_label=False, track_meta=True)
        self.loader = LoadImage(image_only=True, ensure_channel_first=True)

    def probabilities(self, image_path: Path) -> torch.Tensor:
        """Class probabilities on the input's own voxel grid, shape (classes, *input spatial shape)."""
        item = self.preprocess({IMAGE: str(image_path)})
        net_image = item[IMAGE]
        probs = torch.softmax(self.engine.predict_logits(net_image), dim=0).cpu()
        probs = MetaTensor(probs, meta=dict(net_image.meta))  # carries the preprocessed grid's affine
        original = self.loader(str(image_path))
        back = ResampleToMatch(mode="bilinear", padding_mode="zeros")(probs, img_dst=original)
        # Voxels outside the foreground crop received no prediction: they are background.
        outside = back.sum(0, keepdim=True) < 1e-3
        back[0:1][outside] = 1.0
        return back.as_tensor()

    def segment(self, image_path: Path, out_path: Path) -> Path:
        check_input(image_path, self.spec)
        # torch.max(...).indices equals argmax and is 10-50x faster on CPU (bench/inference.py).
        mask = torch.max(self.probabilities(image_path), 0).indices.numpy().astype(np.uint8)
        return save_mask_like(image_path, mask, out_path)


def save_mask_like(image_path: Path, mask: np.ndarray, out_path: Path) -> Path:
    """Write ``mask`` (uint8, the image's spatial shape) with the image's affine and header."""
    src = nib.load(str(image_path))
    header = src.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    if len(header.get_data_shape()) > 3:
        header.set_data_shape(src.shape[:3])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), src.affine, header), str(out_path))
    return out_path
