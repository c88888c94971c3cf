"""``fedseg infer`` on a DICOM series folder: the NIfTI mask, and optionally a DICOM SEG of it.

The series is stacked exactly as ``fedseg data import-dicom`` stacks it (same sorting, checks,
HU and resampling rules), segmented by the ordinary NIfTI path of :class:`fedseg.infer.Predictor`,
and the mask is laid back onto the series' own slices for the SEG, whose frames reference them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from fedseg.data.dicom_scan import scan_folder
from fedseg.data.dicom_series import SeriesGeometry, check_geometry, read_slices, to_regular_grid, to_source_slices
from fedseg.data.phantoms.nifti import save_nifti
from fedseg.data.problems import ProblemReport
from fedseg.data.seg import write_seg
from fedseg.errors import DataError
from fedseg.infer import Predictor


def read_series_folder(folder: Path) -> tuple[SeriesGeometry, np.ndarray]:
    """The one image series in ``folder`` as (geometry, volume on its regular grid).

    Raises:
        DataError: no usable series, or several (names the folder and lists every problem).
    """
    folder = Path(folder)
    try:
        scan = scan_folder(folder)
    except FileNotFoundError as exc:
        raise DataError(str(exc)) from None
    report = ProblemReport()
    usable = [(s, g) for s in scan.series if (g := check_geometry(s, report)) is not None]
    if len(usable) != 1:
        found = f"{len(usable)} usable image series" + (f" ({', '.join(s.shown for s, _ in usable)})" if usable else "")
        details = "\n".join(str(p) for p in [*report.problems, *scan.report.problems])
        raise DataError(f"{folder}: {found}; point --image at one series' folder" + (f"\n{details}" if details else ""))
    series, geometry = usable[0]
    try:
        volume = read_slices(geometry)
    except ValueError as exc:
        raise DataError(f"{folder}: {exc}") from None
    return geometry, to_regular_grid(volume, geometry)


def nifti_beside(out: Path) -> Path:
    """``mask.dcm`` -> ``mask.nii.gz``: where the NIfTI mask goes next to a SEG."""
    return Path(out).with_suffix(".nii.gz")


def segment_series(predictor: Predictor, folder: Path, out: Path) -> list[Path]:
    """Segment a DICOM series; write ``out`` (``.nii.gz``, or ``.dcm`` for a SEG plus the NIfTI beside it).

    Returns:
        The files written, the NIfTI mask first.
    """
    out = Path(out)
    as_seg = out.suffix.lower() == ".dcm"
    nifti_out = nifti_beside(out) if as_seg else out
    geometry, volume = read_series_folder(folder)
    with tempfile.TemporaryDirectory(prefix="fedseg_infer_") as tmp:
        image = Path(tmp) / "series.nii.gz"
        save_nifti(image, volume, geometry.affine)
        try:
            predictor.segment(image, nifti_out)
        except DataError as exc:
            raise DataError(str(exc).replace(str(image), str(folder))) from None
    if not as_seg:
        return [nifti_out]
    mask = to_source_slices(np.asarray(nib.load(str(nifti_out)).dataobj), geometry)
    spec = predictor.spec
    write_seg(mask, geometry, spec.foreground_labels, out, algorithm=f"fedseg {spec.name} {spec.variant_name}")
    return [nifti_out, out]
