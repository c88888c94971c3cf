"""``fedseg infer``: segment a volume and write the mask on the input's own grid.

The input's voxels are read once, and only the body is computed on. The task's evaluation
preprocessing (RAS, training spacing, intensity window, foreground crop) keeps, on the training
grid, the box of voxels above the window's floor (-57 HU for spleen: air and fat are cut), and
the batched sliding windows run over that box only. Here the resampling to the training grid is
restricted to that box too: MONAI's ``CropForeground`` finds the body on the input grid (the
same threshold, on raw HU), and only the voxels of the training grid around it are interpolated,
from the whole image and at the positions the whole-volume resampling would use, so the network
sees the same image either way. Class probabilities go back (through the affines, so any
orientation works) onto the region of the input grid that the network's box covers; their argmax
fills that region of a uint8 mask that is background elsewhere, written with the input's affine.
Both resamplings run per axis (:mod:`fedseg.axis_resample`), and with several inputs the next
file is read while the model runs on this one.
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
import os
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval
from monai.transforms import (Compose, CropForeground, LoadImage, LoadImaged, Orientationd, ResampleToMatch,
                              Spacingd, SpatialCrop)

from fedseg.axis_resample import PADDINGS, resample_parallel_axes
from fedseg.checkpoint import load_model
from fedseg.data.checks import check_image_file, crop_threshold
from fedseg.engine import Runtime, SegmentationEngine
from fedseg.errors import DataError, FedsegError
from fedseg.progress import Progress
from fedseg.tasks.spec import TaskSpec
from fedseg.transforms import IMAGE, eval_transforms

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SEG_SUFFIX = ".dcm"  # a DICOM SEG, for a DICOM series input


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _stem(path: Path) -> str:
    """``ct.nii.gz`` -> ``ct``; a series folder keeps its name."""
    name = path.name.rstrip("/")
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_folder_target(out: str | Path) -> bool:
    """``--out`` names a folder: it exists as one, or is written with a trailing separator (``masks/``)."""
    text = str(out)
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


def _check_writable(target: Path) -> None:
    """Refuse ``target`` unless a file can be written there; names the path and the reason."""
    if target.is_dir():
        raise FedsegError(f"--out {target}: is a folder, not a file; name the mask file (e.g. mask.nii.gz)")
    if target.exists():
        if not os.access(target, os.W_OK):
            raise FedsegError(f"--out {target}: file exists and is not writable")
        return
    parent = target.parent
    while not parent.exists():  # the folders that will be created must sit in a writable one
        parent = parent.parent
    if not parent.is_dir():
        raise FedsegError(f"--out {target}: {parent} is a file, so no folder can be made there")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FedsegError(f"--out {target}: cannot write in {parent} (permission denied)")


def plan_outputs(images: list[Path], out: str | Path) -> list[tuple[Path, Path]]:
    """Pair every input with the mask file it will get, refusing an unusable ``out`` before any work.

    ``out`` is a mask file for one input (``.nii.gz`` or ``.nii``; ``.dcm`` for a DICOM series: a SEG
    plus the ``.nii.gz`` beside it), or a folder (existing, or written with a trailing ``/``) that
    receives ``<input name>_mask.nii.gz`` for each input.

    Raises:
        FedsegError: an unsupported extension, several inputs for one file, two inputs with one
            name, or a place that cannot be written (each names the path and what is wrong).
    """
    images = [Path(i) for i in images]
    if not images:
        raise FedsegError("give at least one --image")
    missing = [str(i) for i in images if not i.exists()]
    if missing:
        raise FedsegError(f"--image: not found: {', '.join(missing)}")
    if is_folder_target(out):
        folder = Path(out)
        pairs = [(image, folder / f"{_stem(image)}_mask.nii.gz") for image in images]
        clashes = sorted({str(t) for _, t in pairs if sum(t == u for _, u in pairs) > 1})
        if clashes:
            raise FedsegError(f"--out {folder}: several inputs would write {', '.join(clashes)}; give inputs with "
                              "different names, or one call each")
    else:
        target = Path(out)
        if len(images) > 1:
            raise FedsegError(f"--out {target}: {len(images)} inputs need a folder (e.g. --out masks/), "
                              "one mask file per input is written there")
        suffix = _suffix(target)
        allowed = NIFTI_SUFFIXES + ((SEG_SUFFIX,) if images[0].is_dir() else ())
        if suffix not in allowed:
            hint = "" if images[0].is_dir() else " (.dcm, a DICOM SEG, needs a DICOM series folder as --image)"
            raise FedsegError(f"--out {target}: unsupported output type {suffix or '(no extension)'!r}; give a "
                              f"{' or '.join(allowed)} file, or a folder ending in /{hint}")
        pairs = [(images[0], target)]
    for _, target in pairs:
        _check_writable(target)
        if _suffix(target) == SEG_SUFFIX:
            _check_writable(target.with_suffix(".nii.gz"))
    return pairs


def sliding_windows(image_shape: tuple[int, ...], spec: TaskSpec) -> int:
    """How many network calls a sliding-window pass over an image of ``image_shape`` makes (batches of windows).

    The same grid as MONAI's ``sliding_window_inference``: the image padded to at least one window,
    windows ``roi * (1 - overlap)`` apart.
    """
    roi = tuple(spec.sw_roi)
    size = tuple(max(s, r) for s, r in zip(image_shape, roi))
    interval = _get_scan_interval(size, roi, len(roi), (spec.sw_overlap,) * len(roi))
    windows = len(dense_patch_slices(size, roi, interval, return_slice=False))
    return math.ceil(windows / spec.sw_batch_size)


@contextlib.contextmanager
def window_progress(network: torch.nn.Module, image_shape: tuple[int, ...], spec: TaskSpec,
                    label: str) -> Iterator[Progress]:
    """Count the network's calls during a sliding-window pass (a forward hook) as progress."""
    progress = Progress(label, sliding_windows(image_shape, spec), unit="batch")
    handle = network.register_forward_hook(lambda *_: progress.advance())
    try:
        yield progress
    finally:
        handle.remove()
        progress.close()


def check_input(path: Path, spec: TaskSpec) -> None:
    """Refuse an input the task cannot use (unreadable, wrong dimensions or channels) before inference."""
    check_image_file(Path(path), spec).raise_if_fatal(f"cannot segment {path} with task {spec.name!r}", "inference")


class Predictor:
    """A task's model ready to segment files; reuse it for many volumes.

    ``body_crop=False`` resamples the whole input grid both ways (the path the crop is checked
    against: tests/test_infer.py).
    """

    def __init__(self, spec: TaskSpec, model_path: Path, runtime: Runtime | None = None, *, body_crop: bool = True):
        self.spec = spec
        self.engine = SegmentationEngine(spec, runtime or Runtime.create("auto"))
        self.engine.set_weights(load_model(model_path, spec))
        self.preprocess = eval_transforms(spec, with_label=False, track_meta=True)
        self.loader = LoadImage(image_only=True, ensure_channel_first=True)
        load, orient, spacing, *rest = self.preprocess.transforms  # see fedseg.transforms.preprocessing
        if not (isinstance(load, LoadImaged) and isinstance(orient, Orientationd) and isinstance(spacing, Spacingd)):
            raise TypeError("fedseg.transforms.preprocessing must start with LoadImaged, Orientationd, Spacingd")
        self.orient, self.spacing, self.rest = orient, spacing, Compose(rest)
        threshold = crop_threshold(spec)
        self.body = None
        if body_crop and threshold is not None:
            self.body = CropForeground(select_fn=lambda x: x > threshold, allow_smaller=True)

    def resampling_grid(self, oriented: MetaTensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Affine and shape of the training-spacing grid that ``oriented`` (RAS) is resampled onto.

        The whole volume's grid (MONAI's ``Spacingd``, computed lazily: no voxel is interpolated), or
        with the body crop the part of it within one input voxel of the body: every voxel that the
        interpolation can lift above the threshold, so the foreground crop that follows finds the
        same box as on the whole grid.
        """
        target = self.spacing({IMAGE: oriented}, lazy=True)[IMAGE]
        grid, shape = target.peek_pending_affine(), tuple(int(n) for n in target.peek_pending_shape())
        if self.body is None:
            return grid, shape
        start, end = self.body.compute_bounding_box(oriented)
        if np.any(end <= start):  # nothing above the threshold: the whole grid (the check refuses such input)
            return grid, shape
        to_grid = torch.linalg.inv(grid) @ torch.as_tensor(oriented.affine, dtype=grid.dtype)
        lo, hi = _box_on(to_grid, start - 1, end)
        lo = np.maximum(np.floor(lo) - 1, 0).astype(int)
        hi = np.minimum(np.ceil(hi) + 2, shape).astype(int)
        sub = grid.clone()
        sub[:3, 3] = (grid @ torch.as_tensor([*lo, 1.0], dtype=grid.dtype))[:3]
        return sub, tuple(int(n) for n in hi - lo)

    def network_image(self, image: MetaTensor) -> MetaTensor:
        """The preprocessed image the network sees, from the loaded input (its own grid)."""
        oriented = self.orient({IMAGE: image})[IMAGE]
        grid, shape = self.resampling_grid(oriented)
        return self.rest({IMAGE: self.to_grid(oriented, grid, shape)})[IMAGE]

    def to_grid(self, oriented: MetaTensor, grid: torch.Tensor, shape: tuple[int, ...]) -> MetaTensor:
        """``oriented`` resampled onto ``grid`` as Spacingd does (its mode and padding).

        Per axis where the grids' axes are parallel, in float32: Spacingd computes in float64, and
        the two differ by about 2e-4 HU (tests/test_axis_resample.py), for 2.3x less time.
        """
        sp = self.spacing
        mode, padding = str(sp.mode[0]), str(sp.padding_mode[0])
        if mode == "bilinear" and not sp.align_corners[0] and padding in PADDINGS:
            xform = np.linalg.solve(oriented.affine.numpy().astype(np.float64), grid.numpy().astype(np.float64))
            values = resample_parallel_axes(oriented.as_tensor(), xform, shape, padding=padding)
            if values is not None:
                meta = {k: v for k, v in oriented.meta.items() if k != "affine"}
                return MetaTensor(values.float(), affine=grid, meta=meta)
        return sp.spacing_transform.sp_resample(oriented, dst_affine=grid, spatial_size=shape, mode=sp.mode[0],
                                                padding_mode=sp.padding_mode[0], align_corners=sp.align_corners[0],
                                                dtype=sp.dtype[0])

    def logits(self, net_image: MetaTensor) -> torch.Tensor:
        """Batched sliding windows over the network's image, counted as progress."""
        with window_progress(self.engine.network, tuple(net_image.shape[1:]), self.spec,
                             f"segment {Path(str(net_image.meta.get('filename_or_obj', 'image'))).name}"):
            return self.engine.predict_logits(net_image)

    def back_to_input(self, logits: torch.Tensor, net_image: MetaTensor,
                      image: MetaTensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
        """Class probabilities on the part of ``image``'s grid that the network's image covers.

        Returns the probabilities (classes, *region) and the region's slices of ``image``'s grid.
        """
        probs = MetaTensor(torch.softmax(logits, dim=0).cpu(), meta=dict(net_image.meta))
        box = tuple(slice(None) for _ in image.shape[1:])
        if self.body is not None:
            # The network's box (one voxel more: bilinear weights reach that far), on the input grid.
            to_input = torch.linalg.inv(torch.as_tensor(image.affine, dtype=torch.float64)) @ torch.as_tensor(
                net_image.affine, dtype=torch.float64)
            lo, hi = _box_on(to_input, np.full(3, -1), np.asarray(net_image.shape[1:]))
            lo = np.maximum(np.floor(lo), 0).astype(int)
            hi = np.minimum(np.ceil(hi) + 1, image.shape[1:]).astype(int)
            box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            image = SpatialCrop(roi_slices=box)(image)
        to_net = np.linalg.solve(probs.affine.numpy().astype(np.float64), image.affine.numpy().astype(np.float64))
        back = resample_parallel_axes(probs.as_tensor(), to_net, tuple(image.shape[1:]))
        if back is None:  # an oblique map between the grids
            back = ResampleToMatch(mode="bilinear", padding_mode="zeros")(probs, img_dst=image).as_tensor()
        # Voxels outside the foreground crop received no prediction: they are background.
        outside = back.sum(0, keepdim=True) < 1e-3
        back[0:1][outside] = 1.0
        return back, box

    def mask(self, image_path: Path, *, check: bool = True) -> np.ndarray:
        """The uint8 class-index mask on the input's own voxel grid (``check=False``: the caller checked it)."""
        if check:
            check_input(image_path, self.spec)
        return self.mask_of(self.loader(str(image_path)))

    def mask_of(self, image: MetaTensor) -> np.ndarray:
        """The uint8 class-index mask of a loaded image (channel first), on its own voxel grid."""
        net_image = self.network_image(image)
        probs, box = self.back_to_input(self.logits(net_image), net_image, image)
        mask = np.zeros(tuple(image.shape[1:]), dtype=np.uint8)
        # torch.max(...).indices equals argmax and is 10-50x faster on CPU (bench/inference.py).
        mask[box] = torch.max(probs, 0).indices.numpy().astype(np.uint8)
        return mask

    def segment(self, image_path: Path, out_path: Path, *, check: bool = True) -> Path:
        """Segment one NIfTI file and write the mask to ``out_path``; returns ``out_path``."""
        return save_mask_like(image_path, self.mask(image_path, check=check), out_path)

    def segment_files(self, pairs: list[tuple[Path, Path]]) -> Iterator[Path]:
        """Segment checked NIfTI files (input, mask file), yielding each mask file as it is written.

        The next file is read in a thread while the model runs on this one: decompressing a
        ``.nii.gz`` is a sixth of the time per volume and leaves the GIL, as torch's kernels do.
        A read's error is raised here, for its own file, in order.
        """
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedseg-read") as reader:
            ahead = [reader.submit(self._read, image) for image, _ in pairs[:1]]
            for k, (image_path, out_path) in enumerate(pairs):
                image = ahead.pop().result()
                if k + 1 < len(pairs):
                    ahead.append(reader.submit(self._read, pairs[k + 1][0]))
                yield save_mask_like(image_path, self.mask_of(image), out_path)

    def _read(self, path: Path) -> MetaTensor:
        try:
            return self.loader(str(path))
        except Exception as e:  # checked before, so it changed since (or the disk failed): name the file
            raise DataError(f"{path}: could not be read for inference ({type(e).__name__}: {e})") from e


def _box_on(affine: torch.Tensor, start, end) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest coordinates, after ``affine``, of the box of voxel indices ``start``..``end``."""
    corners = np.array(np.meshgrid(*[(a, b) for a, b in zip(start, end)], indexing="ij")).reshape(3, -1)
    mapped = affine.numpy() @ np.vstack([corners, np.ones(corners.shape[1])])
    return mapped[:3].min(1), mapped[:3].max(1)


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
