"""Click-driven inference: the mask of the clicked object on one axial slice, on the image's own grid.

Clicks are voxel indices ``(x, y)`` along the image file's first and second array axes on slice
``z`` of its third axis, as viewers such as ITK-SNAP and 3D Slicer show voxel coordinates. The
slice is turned to the orientation the model was trained in (RAS, as ``create_dataset`` writes
samples), resampled to the task's pixel spacing, cropped around the clicks and resized to the
network's input, exactly as training cropped around the object; the predicted mask travels the
same way back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.apps.deepgrow.transforms import AddGuidanceSignald

from fedseg.checkpoint import load_model
from fedseg.data.checks import check_image_file
from fedseg.deepgrow.transforms import GUIDANCE
from fedseg.engine import Runtime, SegmentationEngine
from fedseg.errors import DataError, FedsegError
from fedseg.infer import save_mask_like
from fedseg.tasks.spec import TaskSpec
from fedseg.transforms import IMAGE

Point = tuple[int, int]


class ClickError(FedsegError):
    """Clicks that cannot be used on the given image and slice."""


@dataclass(frozen=True)
class SliceFrame:
    """How a slice's array axes map to the model's (RAS) in-plane axes: transpose, then flips."""

    transpose: bool
    flip: tuple[bool, bool]
    spacing: tuple[float, float]  # mm per pixel along the model's axes

    @classmethod
    def of(cls, affine: np.ndarray, path: Path) -> "SliceFrame":
        ornt = nib.orientations.io_orientation(affine)
        world = (int(ornt[0, 0]), int(ornt[1, 0]))
        if sorted(world) != [0, 1]:
            raise DataError(f"{path}: the third array axis is not the superior-inferior one, so its slices are not "
                            "axial; Deepgrow 2D annotates axial slices (reorient the image first)")
        transpose = world[0] == 1
        axes = (1, 0) if transpose else (0, 1)
        zooms = np.linalg.norm(affine[:3, :3], axis=0)
        return cls(transpose, (bool(ornt[axes[0], 1] < 0), bool(ornt[axes[1], 1] < 0)),
                   (float(zooms[axes[0]]), float(zooms[axes[1]])))

    def to_model(self, arr: np.ndarray) -> np.ndarray:
        out = arr.T if self.transpose else arr
        for axis, flip in enumerate(self.flip):
            if flip:
                out = np.flip(out, axis)
        return np.ascontiguousarray(out)

    def from_model(self, arr: np.ndarray) -> np.ndarray:
        out = arr
        for axis, flip in enumerate(self.flip):
            if flip:
                out = np.flip(out, axis)
        return np.ascontiguousarray(out.T if self.transpose else out)

    def point_to_model(self, p: Point, shape: tuple[int, int]) -> tuple[float, float]:
        """``p`` in the file's slice (shape ``shape``) as a position in the model-oriented slice."""
        q = [p[1], p[0]] if self.transpose else [p[0], p[1]]
        n = (shape[1], shape[0]) if self.transpose else shape
        return tuple(float(n[k] - 1 - q[k]) if self.flip[k] else float(q[k]) for k in range(2))


def check_clicks(path: Path, shape: tuple[int, int, int], z: int, fg: list[Point], bg: list[Point]) -> None:
    """Refuse a slice or clicks outside the image, naming the file, the click and the allowed range."""
    if not fg:
        raise ClickError("give at least one foreground click (--fg x,y) inside the object to segment")
    if not 0 <= z < shape[2]:
        raise ClickError(f"slice {z} is outside {path}, which has slices 0..{shape[2] - 1}")
    for kind, points in (("foreground", fg), ("background", bg)):
        for x, y in points:
            if not (0 <= x < shape[0] and 0 <= y < shape[1]):
                raise ClickError(f"{kind} click ({x}, {y}) is outside slice {z} of {path}, which is "
                                 f"{shape[0]} x {shape[1]} pixels (x 0..{shape[0] - 1}, y 0..{shape[1] - 1})")


def _resize(arr: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(arr[None, None].float(), size=size, mode=mode, **kwargs)[0, 0]


class Annotator:
    """A Deepgrow model ready to answer clicks on any number of images."""

    def __init__(self, spec: TaskSpec, model_path: Path, runtime: Runtime | None = None):
        if not spec.interactive:
            raise ValueError(f"task {spec.name!r} is not a click-driven task")
        self.spec = spec
        self.engine = SegmentationEngine(spec, runtime or Runtime.create("auto"))
        self.engine.set_weights(load_model(model_path, spec))
        self.signal = AddGuidanceSignald(image=IMAGE, guidance=GUIDANCE, sigma=spec.interaction.sigma)

    def segment_slice(self, image_path: Path, z: int, fg: list[Point], bg: list[Point] = ()) -> np.ndarray:
        """The clicked object's mask (bool, the slice's own x-by-y pixel grid) on slice ``z``."""
        raw, frame = self.load_slice(image_path, z)  # refuses a slice outside the image
        check_clicks(Path(image_path), (*raw.shape, z + 1), z, list(fg), list(bg))
        return self.segment(raw, frame, fg, bg)

    def load_slice(self, image_path: Path, z: int) -> tuple[np.ndarray, SliceFrame]:
        """Slice ``z`` of a checked image (the file's x-by-y grid) and how it maps to the model's axes."""
        image_path = Path(image_path)
        check_image_file(image_path, self.spec).raise_if_fatal(f"cannot annotate {image_path}", "annotation")
        img = nib.load(str(image_path))
        if not 0 <= z < img.shape[2]:
            raise ClickError(f"slice {z} is outside {image_path}, which has slices 0..{img.shape[2] - 1}")
        frame = SliceFrame.of(img.affine, image_path)
        raw = np.asarray(img.dataobj[..., z] if len(img.shape) == 3 else img.dataobj[:, :, z, 0], dtype=np.float32)
        return raw, frame

    def segment(self, raw: np.ndarray, frame: SliceFrame, fg: list[Point], bg: list[Point] = ()) -> np.ndarray:
        """The mask (bool, ``raw``'s grid) of the object clicked on the slice ``raw`` (from :meth:`load_slice`)."""
        native = frame.to_model(raw)
        # Resample to the task's pixel spacing.
        scale = [s / t for s, t in zip(frame.spacing, self.spec.spacing)]
        size = tuple(max(1, round(n * f)) for n, f in zip(native.shape, scale))
        grid = _resize(torch.from_numpy(native), size, "bilinear")

        def to_grid(p: Point) -> np.ndarray:
            q = frame.point_to_model(p, raw.shape)
            return np.array([(q[k] + 0.5) * scale[k] - 0.5 for k in range(2)])

        pos, neg = [to_grid(p) for p in fg], [to_grid(p) for p in bg]
        start, window = self._window(np.array(pos), size)
        mask_window = self._predict(grid, start, window, pos, neg)
        canvas = torch.zeros(size)
        lo = np.maximum(start, 0)
        hi = np.minimum(start + window, size)
        canvas[lo[0]:hi[0], lo[1]:hi[1]] = mask_window[lo[0] - start[0]:hi[0] - start[0], lo[1] - start[1]:hi[1] - start[1]]
        back = _resize(canvas, native.shape, "nearest") > 0.5
        return frame.from_model(back.numpy())

    def click_curve(self, image_path: Path, z: int, mask: np.ndarray, clicks: int = 15, seed: int = 0) -> list[float]:
        """Dice on slice ``z`` after each of ``clicks`` simulated clicks at the object ``mask`` (the slice's grid).

        The simulated annotator is the one training and validation use (:mod:`fedseg.deepgrow.clicks`):
        a first click inside the object, then each click in the larger of the missed and the wrongly
        included region, deepest point most likely; here every click goes through this class, as a
        person's would through ``fedseg annotate``.
        """
        from monai.apps.deepgrow.transforms import AddInitialSeedPointd, AddRandomGuidanced, FindDiscrepancyRegionsd

        raw, frame = self.load_slice(image_path, z)
        label = np.asarray(mask, dtype=np.float32)[None]
        if label.shape[1:] != raw.shape:
            raise ValueError(f"mask shape {label.shape[1:]} is not the slice's {raw.shape}")
        seed_click, corrective = AddInitialSeedPointd(), AddRandomGuidanced()
        seed_click.set_random_state(seed)
        corrective.set_random_state(seed)
        fg: list[Point] = [(int(p[1]), int(p[2])) for p in json.loads(seed_click({"label": label})["guidance"])[0]
                           if min(p) >= 0]
        bg: list[Point] = []
        curve = []
        for n in range(1, clicks + 1):
            pred = self.segment(raw, frame, fg, bg)
            inter, total = float((pred & (label[0] > 0)).sum()), float(pred.sum() + (label[0] > 0).sum())
            curve.append(1.0 if total == 0 else 2 * inter / total)
            if n < clicks:
                discrepancy = FindDiscrepancyRegionsd.disparity(label, pred[None].astype(np.float32))
                pos, neg = corrective.add_guidance(discrepancy, True)
                if pos:
                    fg.append((int(pos[1]), int(pos[2])))
                elif neg:
                    bg.append((int(neg[1]), int(neg[2])))
        return curve

    def _window(self, points: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """A crop at least the network's input in size, centred on the foreground clicks (margin: a quarter of the input).

        Background clicks do not widen it: one far from the object would shrink the object below the
        scale the model learnt (they can only be where the model marked something, inside the window).
        """
        patch = np.array(self.spec.patch_size)
        margin = patch // 4
        lo, hi = np.floor(points.min(0)) - margin, np.ceil(points.max(0)) + margin + 1
        window = np.maximum(patch, hi - lo).astype(int)
        centre = (lo + hi) / 2
        start = np.round(centre - window / 2).astype(int)
        return start, window

    @torch.no_grad()
    def _predict(self, grid: torch.Tensor, start: np.ndarray, window: np.ndarray, pos, neg) -> torch.Tensor:
        # Pixels of the window outside the slice repeat its edge, as training padded with "replicate".
        rows = np.clip(np.arange(start[0], start[0] + window[0]), 0, grid.shape[0] - 1)
        cols = np.clip(np.arange(start[1], start[1] + window[1]), 0, grid.shape[1] - 1)
        crop = grid[rows][:, cols]
        patch = self.spec.patch_size
        image = _resize(crop, patch, "bilinear")
        it = self.spec.intensity
        image = (image - it.subtrahend) / it.divisor

        def to_patch(p: np.ndarray) -> list[int]:
            q = (p - start + 0.5) * np.array(patch) / window - 0.5
            return [int(np.clip(round(q[k]), 0, patch[k] - 1)) for k in range(2)]

        def inside(p: np.ndarray) -> bool:
            return bool(np.all(p >= start - 0.5) and np.all(p < start + window - 0.5))

        # A background click outside the window says nothing the model could use (it predicts nothing
        # there); clamped onto the window's edge it would mark a place the user never clicked.
        guidance = [[to_patch(p) for p in pos], [to_patch(p) for p in neg if inside(p)]]
        sample = self.signal({IMAGE: image[None].numpy(), GUIDANCE: guidance})
        x = torch.as_tensor(sample[IMAGE])[None].to(self.engine.runtime.device)
        network = self.engine.network
        network.eval()
        probs = torch.sigmoid(network(x))[0, 0].cpu()
        return _resize((probs > 0.5).float(), tuple(int(w) for w in window), "nearest")

    def annotate(self, image_path: Path, z: int, fg: list[Point], bg: list[Point], out_path: Path) -> Path:
        """Write the mask as a NIfTI with the image's shape and affine, non-zero only on slice ``z``."""
        mask2d = self.segment_slice(image_path, z, fg, bg)
        volume = np.zeros(nib.load(str(image_path)).shape[:3], dtype=np.uint8)
        volume[:, :, z] = mask2d
        return save_mask_like(image_path, volume, out_path)
