"""Check a site's data before anything trains on it, and report every problem at once.

Each image and label is opened with nibabel (not through MONAI, so a bad file gives a message
about that file rather than a traceback from deep inside a transform) and checked for: readable
and complete NIfTI, dimensions and channels the task needs, finite voxels, sane spacing, image
and label on the same grid, label values among the task's labels, an empty training label
(warning) and intensities implausible for the modality (warning).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from fedseg.data.datalist import Case, Datalist, parse_datalist
from fedseg.data.msd import DatasetInfo, read_dataset_info
from fedseg.data.problems import ProblemReport
from fedseg.errors import DataError
from fedseg.tasks.spec import TaskSpec

AFFINE_TOLERANCE_MM = 1e-2  # image and label affines may differ by float noise, not by a voxel
MAX_SPACING_MM = 50.0


@dataclass
class _Loaded:
    data: np.ndarray
    affine: np.ndarray
    zooms: tuple[float, ...]


GZIP_MAGIC = b"\x1f\x8b"


def _sniff(path: Path, report: ProblemReport, what: str) -> bool:
    """Refuse, by its first bytes, a file whose name promises gzip-compressed NIfTI but is something else."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(352)
    except OSError as exc:
        report.add("unreadable_file", path, f"{what} cannot be opened ({exc.strerror})")
        return False
    if not head:
        report.add("truncated_file", path, f"{what} is empty (0 bytes)")
        return False
    if str(path).endswith(".gz") and not head.startswith(GZIP_MAGIC):
        looks = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64]) else "binary data"
        report.add("not_nifti", path, f"{what} is named .gz but holds {looks}, not gzip-compressed NIfTI")
        return False
    return True


def _load(path: Path, report: ProblemReport, what: str) -> _Loaded | None:
    """Open and fully read a NIfTI file, turning every failure into a named problem."""
    if not _sniff(path, report, what):
        return None
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            report.add("not_nifti", path, f"{what} is a {type(img).__name__}, not NIfTI")
            return None
        data = np.asanyarray(img.dataobj)
    except ImageFileError:
        report.add("not_nifti", path, f"{what} is not a NIfTI file (nibabel cannot recognise its format)")
        return None
    except EOFError as exc:
        report.add("truncated_file", path, f"{what} ends early, the file is truncated ({exc})")
        return None
    except (gzip.BadGzipFile, zlib.error) as exc:
        report.add("corrupt_file", path, f"{what} has corrupt compressed data ({exc})")
        return None
    except (OSError, ValueError) as exc:
        report.add("truncated_file", path, f"{what} data cannot be read in full, the file may be truncated ({exc})")
        return None
    # Spacing as MONAI will see it: from the affine, not the header's pixdim (which nibabel "repairs").
    zooms = tuple(float(z) for z in np.linalg.norm(img.affine[:3, :3], axis=0))
    return _Loaded(data, img.affine, zooms)


def _expected_dims(spec: TaskSpec) -> str:
    n = spec.image_channels
    return "3D" if n == 1 else f"4D with {n} channels in the last axis"


def check_case(case: Case, spec: TaskSpec, split: str, report: ProblemReport,
               labels: tuple[str, ...] | None = None) -> None:
    """Append the problems of one case to ``report``.

    ``labels`` are the class names label values may index (default: the task's own).
    """
    report.cases_checked += 1
    image = _load(case.image, report, "image")
    if image is not None and not _check_image(case.image, image, spec, report):
        image = None  # wrong dimensions: comparing its grid with the label's would only repeat that
    if case.label is None:
        return
    label = _load(case.label, report, "label")
    if label is None:
        return
    _check_label(case.label, label, labels or spec.labels, split, report)
    if image is not None:
        _check_same_grid(case, image, label, report)


def _check_image(path: Path, img: _Loaded, spec: TaskSpec, report: ProblemReport) -> bool:
    """Record the image's problems; False when its dimensions are wrong for the task."""
    data = img.data
    if spec.image_channels == 1:
        ok = data.ndim == 3 or (data.ndim == 4 and data.shape[3] == 1)
    else:
        ok = data.ndim == 4 and data.shape[3] == spec.image_channels
    if not ok:
        report.add("wrong_dimensions", path,
                   f"image has shape {data.shape}; task {spec.name!r} needs {_expected_dims(spec)}")
        return False
    zooms = np.asarray(img.zooms)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0) or np.any(zooms > MAX_SPACING_MM):
        shown = " x ".join(f"{z:.3g}" for z in zooms)
        report.add("bad_spacing", path, f"voxel spacing {shown} mm (from the affine) is zero, negative or absurd "
                                        f"(allowed: above 0 and up to {MAX_SPACING_MM:g} mm)")
        return False
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            report.add("non_finite_voxels", path, f"image holds {bad} NaN or infinite voxel(s)")
            return True
    lo, hi = float(np.min(data)), float(np.max(data))
    p_lo, p_hi = spec.plausible_range
    if lo < p_lo - 1 or hi > p_hi + 1 or (spec.modality == "CT" and hi - lo < 200):
        report.add("implausible_intensity", path,
                   f"intensities {lo:.1f}..{hi:.1f} look implausible for {spec.modality} "
                   f"(expected within {p_lo:g}..{p_hi:g})", fatal=False)
    return True


def _check_label(path: Path, lbl: _Loaded, labels: tuple[str, ...], split: str, report: ProblemReport) -> None:
    data = lbl.data
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        report.add("wrong_dimensions", path, f"label has shape {lbl.data.shape}; labels must be 3D class-index maps")
        return
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        report.add("non_finite_voxels", path, "label holds NaN or infinite voxels")
        return
    values = np.unique(data)
    allowed = set(range(len(labels)))
    wrong = [v for v in values.tolist() if v not in allowed]
    if wrong:
        shown = ", ".join(f"{v:g}" for v in wrong[:10])
        report.add("bad_label_values", path,
                   f"label values {shown} are not among the labels 0..{len(labels) - 1} "
                   f"({', '.join(labels)})")
    elif split == "training" and values.max(initial=0) == 0:
        report.add("empty_label", path, "training label is empty (background only)", fatal=False)


def _check_same_grid(case: Case, image: _Loaded, label: _Loaded, report: ProblemReport) -> None:
    img_shape, lbl_shape = image.data.shape[:3], label.data.shape[:3]
    if img_shape != lbl_shape:
        report.add("grid_mismatch", case.label, f"label shape {lbl_shape} differs from image shape {img_shape} "
                                                f"({case.image.name})")
        return
    diff = float(np.max(np.abs(image.affine - label.affine)))
    if diff > AFFINE_TOLERANCE_MM:
        spacing = [" x ".join(f"{z:.3g}" for z in x.zooms) for x in (label, image)]
        report.add("grid_mismatch", case.label,
                   f"label affine differs from the image's by up to {diff:.3g} mm (tolerance {AFFINE_TOLERANCE_MM} mm); "
                   f"spacing {spacing[0]} mm vs {spacing[1]} mm")


def check_image_file(path: Path, spec: TaskSpec) -> ProblemReport:
    """Problems of a lone image (no label), e.g. an input given to inference."""
    report = ProblemReport()
    loaded = _load(Path(path), report, "image")
    if loaded is not None:
        _check_image(Path(path), loaded, spec, report)
    return report


def check_dataset_info(root: Path, spec: TaskSpec, report: ProblemReport) -> DatasetInfo | None:
    """Read ``dataset.json`` and check it declares as many classes and channels as the task has."""
    try:
        info = read_dataset_info(root)
    except DataError as exc:
        report.add("bad_dataset_json", Path(root) / "dataset.json", str(exc))
        return None
    # An interactive task segments whatever objects the dataset labels.
    if not spec.interactive and len(info.labels) != spec.num_classes:
        report.add("label_count_mismatch", Path(root) / "dataset.json",
                   f"declares {len(info.labels)} labels {info.labels}; task {spec.name!r} has {spec.num_classes}")
    if len(info.modalities) != spec.image_channels:
        report.add("channel_count_mismatch", Path(root) / "dataset.json",
                   f"declares {len(info.modalities)} modalities {info.modalities}; task {spec.name!r} "
                   f"needs {spec.image_channels} image channel(s)")
    return info


def check_data(spec: TaskSpec, data_root: Path, datalist: Path, *,
               splits: tuple[str, ...] = ("training", "validation", "test"),
               required: tuple[str, ...] = ("training",)) -> tuple[Datalist, DatasetInfo | None, ProblemReport]:
    """Check ``dataset.json``, the datalist and every file it lists (for the given splits)."""
    report = ProblemReport()
    info = check_dataset_info(data_root, spec, report)
    try:
        parsed, list_report = parse_datalist(datalist, data_root, required_splits=required)
    except DataError as exc:
        report.add("bad_datalist", datalist, str(exc))
        return Datalist(Path(datalist), Path(data_root), {}), info, report
    report.extend(list_report)
    for split in splits:
        for case in parsed.cases(split):
            check_case(case, spec, split, report, info.labels if spec.interactive and info else None)
    return parsed, info, report
