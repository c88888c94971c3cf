"""Check a site's data before anything trains on it, and report every problem at once.

The check must end, quickly and in bounded memory, whatever the files hold, and what it accepts
must be something the task's transforms can train on. So every file is read within bounds
(:mod:`fedseg.data.nifti_scan`: the header first, refused before any voxel if the volume is too
large, then one streaming pass), every file and entry is checked on its own, and anything
unforeseen becomes an ``unexpected_error`` problem naming the file instead of a traceback.

Checked per file: a readable, complete NIfTI of a voxel type the transforms load; dimensions and
channels the task needs; a size within the task's limit before and after resampling; an affine
that is finite, invertible, unsheared and of plausible spacing; finite voxels; an image that is
not constant and, for CT, not 8-bit display values; foreground left after the transforms'
foreground crop; label values that are whole numbers among the task's classes; image and label
on the same grid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedseg.data.datalist import SPLITS, Case, Datalist, parse_datalist
from fedseg.data.geometry import (
    QFORM_SFORM_TOLERANCE_MM, check_affine, qform_sform_disagreement, resampled_extent, resampling_block,
)
from fedseg.data.msd import DatasetInfo, inspect_dataset_info
from fedseg.data.nifti_scan import (
    MAX_LABEL_VALUES, FileProblem, NiftiHeader, VolumeStats, read_header, scan_voxels,
)
from fedseg.data.policy import CheckPolicy
from fedseg.data.problems import ProblemReport
from fedseg.errors import DataError
from fedseg.tasks.spec import TaskSpec

AFFINE_TOLERANCE_MM = 1e-2  # image and label affines may differ by float noise, not by a voxel
# Fewest voxels the foreground crop may span along an axis after resampling. Smaller cases are
# padded to the patch (SpatialPadd before the random crop, sliding_window_inference at evaluation),
# but below this the bilinear resampling can miss the foreground altogether.
MIN_RESAMPLED_VOXELS = 2.0
BYTE_RANGE = (0.0, 255.0)


@dataclass
class _Volume:
    """A file whose header passed and whose voxels were scanned."""

    hdr: NiftiHeader
    zooms: np.ndarray
    stats: VolumeStats
    block: tuple[int, int, int] | None = None  # see geometry.resampling_block

    @property
    def shape3(self) -> tuple[int, ...]:
        return self.hdr.shape[:3]


def crop_threshold(spec: TaskSpec) -> float | None:
    """Raw intensity above which the transforms' foreground crop keeps a voxel (None: no crop).

    The crop keeps voxels above 0 after a CT window (raw above ``a_min``), and above 0 in the raw
    signal for z-scored MR (it is cropped before normalisation).
    """
    if not spec.crop_foreground:
        return None
    kind = spec.intensity.kind
    if kind == "window":
        return spec.intensity.a_min
    if kind == "zscore":
        return 0.0
    if kind == "shift_scale" and spec.intensity.divisor > 0:
        return spec.intensity.subtrahend
    return None  # scale01: the threshold is each image's own minimum


def _expected_dims(spec: TaskSpec) -> str:
    n = spec.image_channels
    return "3D" if n == 1 else f"4D with {n} channels in the last axis"


def _dims_ok(shape: tuple[int, ...], spec: TaskSpec, label: bool) -> bool:
    channels = 1 if label else spec.image_channels
    if channels == 1:
        return len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)
    return len(shape) == 4 and shape[3] == channels


def _limit(spec: TaskSpec, policy: CheckPolicy) -> int:
    return policy.max_voxels or spec.max_voxels


def _open_volume(path: Path, what: str, spec: TaskSpec, policy: CheckPolicy, report: ProblemReport, *,
                 label: bool) -> _Volume | None:
    """Header, size, geometry, then one bounded scan of the voxels; problems go to ``report``."""
    hdr = read_header(path, what)
    if not _dims_ok(hdr.shape, spec, label):
        need = "labels must be 3D class-index maps" if label else f"task {spec.name!r} needs {_expected_dims(spec)}"
        raise FileProblem("wrong_dimensions", f"{what} has shape {hdr.shape}; {need}")
    if 0 in hdr.shape:
        raise FileProblem("wrong_dimensions", f"{what} has shape {hdr.shape}: it holds no voxels")
    limit = _limit(spec, policy)
    if hdr.n_voxels > limit:
        raise FileProblem("too_large", f"{what} declares {' x '.join(map(str, hdr.shape))} = {hdr.n_voxels:,} voxels; "
                                       f"the limit for task {spec.name!r} is {limit:,} (site YAML: max_voxels)")
    zooms = check_affine(hdr, spec, what)
    resampled = resampled_extent(np.asarray(hdr.shape[:3], float), hdr.affine, zooms, spec)
    channels = hdr.n_voxels // int(np.prod(hdr.shape[:3]))
    after = float(np.prod(np.ceil(resampled))) * channels
    if after > limit:
        raise FileProblem("too_large", f"{what} would hold {after:,.0f} voxels after resampling to "
                                       f"{' x '.join(f'{s:g}' for s in spec.spacing)} mm; the limit for task "
                                       f"{spec.name!r} is {limit:,} (site YAML: max_voxels)")
    if np.any(resampled < MIN_RESAMPLED_VOXELS):
        raise FileProblem("too_small_after_resampling", f"{what} spans {' x '.join(f'{r:.2g}' for r in resampled)} "
                                                        f"voxels after resampling to the task's spacing; at least "
                                                        f"{MIN_RESAMPLED_VOXELS:g} per axis are needed")
    gap = qform_sform_disagreement(hdr)
    if gap is not None and gap > QFORM_SFORM_TOLERANCE_MM:
        report.add("qform_sform_mismatch", path,
                   f"{what}'s qform and sform differ by up to {gap:.3g} mm; fedseg (nibabel, MONAI) uses the sform, "
                   f"tools that read the qform (ITK) will place it elsewhere", fatal=False)
    threshold = 0.0 if label else crop_threshold(spec)
    block = None if label else resampling_block(hdr.affine, zooms, spec)
    stats = scan_voxels(hdr, what, threshold=threshold, collect_values=label, block=block)
    return _Volume(hdr, zooms, stats, block)


def _guarded(path: Path, what: str, report: ProblemReport, fn, *args, **kwargs):
    """Run one file's check; a named problem or any unforeseen exception becomes a report entry."""
    try:
        return fn(*args, **kwargs)
    except FileProblem as problem:
        report.add(problem.kind, path, problem.message)
    except Exception as exc:  # the check must survive any file: report it, never raise
        report.add("unexpected_error", path, f"{what} could not be checked: {type(exc).__name__}: {exc}"[:400])
    return None


def check_case(case: Case, spec: TaskSpec, split: str, report: ProblemReport,
               labels: tuple[str, ...] | None = None, policy: CheckPolicy | None = None) -> None:
    """Append the problems of one case to ``report``; never raises.

    ``labels`` are the class names label values may index (default: the task's own).
    """
    policy = policy or CheckPolicy()
    report.cases_checked += 1
    image = _guarded(case.image, "image", report, _check_image_file, case.image, spec, policy, report)
    if case.label is None:
        return
    label = _guarded(case.label, "label", report, _check_label_file, case.label, labels or spec.labels, split,
                     spec, policy, report)
    if image is not None and label is not None:
        _guarded(case.label, "label", report, _check_same_grid, case, image, label, report)


def _check_image_file(path: Path, spec: TaskSpec, policy: CheckPolicy, report: ProblemReport) -> _Volume | None:
    volume = _open_volume(path, "image", spec, policy, report, label=False)
    return volume if _check_image(path, volume, spec, report) else None


def _check_image(path: Path, volume: _Volume, spec: TaskSpec, report: ProblemReport) -> bool:
    """Record the image's content problems; False when one is fatal."""
    stats = volume.stats
    if stats.n_non_finite:
        report.add("non_finite_voxels", path, f"image holds {stats.n_non_finite:,} NaN or infinite voxel(s)")
        return False
    if stats.n_beyond_float32:
        report.add("non_finite_voxels", path, f"image holds {stats.n_beyond_float32:,} voxel(s) beyond the float32 "
                                              f"range (+-3.4e38): infinite once loaded for training")
        return False
    for c, ch in enumerate(stats.channels):
        if ch.lo == ch.hi:
            where = f"channel {c} of the image" if len(stats.channels) > 1 else "the image"
            report.add("constant_image", path, f"every voxel of {where} is {ch.lo:g}: nothing to learn from")
            return False
    lo = min(ch.lo for ch in stats.channels)
    hi = max(ch.hi for ch in stats.channels)
    if spec.modality == "CT" and BYTE_RANGE[0] <= lo and hi <= BYTE_RANGE[1]:
        report.add("not_hounsfield", path, f"every value lies in 0..255 ({lo:g}..{hi:g}): 8-bit display values "
                                           f"(a screenshot or windowed export), not Hounsfield units; export the "
                                           f"original CT")
        return False
    threshold = crop_threshold(spec)
    box = stats.foreground_box()
    if threshold is not None and box is None:
        report.add("no_foreground", path, f"no voxel is above {threshold:g}, the foreground crop's threshold for "
                                          f"task {spec.name!r}: the crop would leave nothing")
        return False
    if box is not None:
        extent = resampled_extent((box[1] - box[0] + 1).astype(float), volume.hdr.affine, volume.zooms, spec)
        if np.any(extent < MIN_RESAMPLED_VOXELS):
            shown = " x ".join(f"{e:.2g}" for e in extent)
            report.add("too_small_after_resampling", path,
                       f"the foreground crop (voxels above {threshold:g}) spans {shown} voxels after resampling; "
                       f"at least {MIN_RESAMPLED_VOXELS:g} per axis are needed")
            return False
        if not any(ch.has_block for ch in stats.channels):
            block = " x ".join(map(str, volume.block))
            spacing = " x ".join(f"{s:g}" for s in spec.spacing)
            report.add("no_foreground", path,
                       f"no block of {block} neighbouring voxels is wholly above {threshold:g} (the foreground "
                       f"crop's threshold): resampled to {spacing} mm, scattered bright voxels can vanish and "
                       f"leave the crop nothing")
            return False
    p_lo, p_hi = spec.plausible_range
    if lo < p_lo - 1 or hi > p_hi + 1 or (spec.modality == "CT" and hi - lo < 200):
        report.add("implausible_intensity", path,
                   f"intensities {lo:.1f}..{hi:.1f} look implausible for {spec.modality} "
                   f"(expected within {p_lo:g}..{p_hi:g})", fatal=False)
    return True


def _check_label_file(path: Path, labels: tuple[str, ...], split: str, spec: TaskSpec, policy: CheckPolicy,
                      report: ProblemReport) -> _Volume | None:
    volume = _open_volume(path, "label", spec, policy, report, label=True)
    stats = volume.stats
    if stats.n_non_finite:
        report.add("non_finite_voxels", path, "label holds NaN or infinite voxels")
        return None
    allowed = set(range(len(labels)))
    if stats.too_many_values:
        report.add("bad_label_values", path, f"label holds more than {MAX_LABEL_VALUES} distinct values; "
                                             f"labels are 0..{len(labels) - 1} ({', '.join(labels)})")
        return None
    wrong = sorted(v for v in stats.values if v not in allowed)
    if stats.non_integer or wrong:
        shown = ", ".join(f"{v:g}" for v in (wrong or sorted(stats.values))[:10])
        fraction = "are not whole numbers; " if stats.non_integer else ""
        report.add("bad_label_values", path, f"label values {shown} {fraction}are not among the labels "
                                             f"0..{len(labels) - 1} ({', '.join(labels)})")
        return None
    if split == "training" and max(stats.values, default=0) == 0:
        report.add("empty_label", path, "training label is empty (background only)", fatal=False)
    return volume


def _check_same_grid(case: Case, image: _Volume, label: _Volume, report: ProblemReport) -> None:
    if image.shape3 != label.shape3:
        report.add("grid_mismatch", case.label, f"label shape {label.shape3} differs from image shape {image.shape3} "
                                                f"({case.image.name})")
        return
    diff = float(np.max(np.abs(image.hdr.affine - label.hdr.affine)))
    if diff > AFFINE_TOLERANCE_MM:
        spacing = [" x ".join(f"{z:.3g}" for z in x.zooms) for x in (label, image)]
        report.add("grid_mismatch", case.label,
                   f"label affine differs from the image's by up to {diff:.3g} mm "
                   f"(tolerance {AFFINE_TOLERANCE_MM} mm); spacing {spacing[0]} mm vs {spacing[1]} mm")


def check_image_file(path: Path, spec: TaskSpec, policy: CheckPolicy | None = None) -> ProblemReport:
    """Problems of a lone image (no label), e.g. an input given to inference."""
    report = ProblemReport()
    _guarded(Path(path), "image", report, _check_image_file, Path(path), spec, policy or CheckPolicy(), report)
    return report


def _name_key(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


def _compare_class_names(path: Path, names: tuple[str, ...], spec: TaskSpec, report: ProblemReport) -> None:
    """A name of the task's at another index is a swap (fatal); an unknown name is a warning."""
    ours = [_name_key(n) for n in spec.labels]
    for value, name in enumerate(names):
        key = _name_key(name)
        if key == ours[value]:
            continue
        if key in ours:
            report.add("class_names_swapped", path,
                       f"label {value} is named {name!r}, which is label {ours.index(key)} in task {spec.name!r} "
                       f"({', '.join(f'{i} = {n}' for i, n in enumerate(spec.labels))}); the sites' label values "
                       f"must mean the same classes: relabel the files (or correct dataset.json)")
        else:
            report.add("class_name_mismatch", path,
                       f"label {value} is named {name!r}; task {spec.name!r} calls it {spec.labels[value]!r}. "
                       f"Values are what count: make sure label {value} is the {spec.labels[value]}", fatal=False)


def check_dataset_info(root: Path, spec: TaskSpec, report: ProblemReport) -> DatasetInfo | None:
    """Read ``dataset.json``: field types, class and channel counts, and class names against the task's."""
    path = Path(root) / "dataset.json"
    info = _guarded(path, "dataset.json", report, inspect_dataset_info, root, report)
    if info is None:
        return None
    # An interactive task segments whatever objects the dataset labels.
    if spec.fixed_classes and len(info.labels) != spec.num_classes:
        report.add("label_count_mismatch", path,
                   f"declares {len(info.labels)} labels {info.labels}; task {spec.name!r} has {spec.num_classes}")
    elif spec.fixed_classes:
        _compare_class_names(path, info.labels, spec, report)
    if len(info.modalities) != spec.image_channels:
        report.add("channel_count_mismatch", path,
                   f"declares {len(info.modalities)} modalities {info.modalities}; task {spec.name!r} "
                   f"needs {spec.image_channels} image channel(s)")
    return info


def check_data(spec: TaskSpec, data_root: Path, datalist: Path, *,
               splits: tuple[str, ...] = SPLITS, required: tuple[str, ...] | None = None,
               policy: CheckPolicy | None = None) -> tuple[Datalist, DatasetInfo | None, ProblemReport]:
    """Check ``dataset.json``, the datalist and every file it lists (for the given splits); never raises.

    ``required`` splits must list cases; by default training, and validation unless the site's
    policy says it is training-only.
    """
    policy = policy or CheckPolicy()
    if required is None:
        required = ("training",) + (("validation",) if "validation" in splits and not policy.training_only else ())
    report = ProblemReport()
    info = check_dataset_info(data_root, spec, report)
    empty = Datalist(Path(datalist), Path(data_root), {})
    try:
        parsed, list_report = parse_datalist(datalist, data_root, required_splits=required,
                                             symlinks=policy.symlinks_outside_root)
    except DataError as exc:
        report.add("bad_datalist", datalist, str(exc))
        return empty, info, report
    except Exception as exc:  # the check must survive any datalist
        report.add("unexpected_error", datalist, f"datalist could not be checked: {type(exc).__name__}: {exc}"[:400])
        return empty, info, report
    report.extend(list_report)
    names = None if spec.fixed_classes or not info else info.labels
    for split in splits:
        for case in parsed.cases(split):
            check_case(case, spec, split, report, names, policy)
    return parsed, info, report
