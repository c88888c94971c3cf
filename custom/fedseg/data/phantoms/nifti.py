"""Writing phantoms as NIfTI files in the orientations scanners and converters produce."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform


def reorient_from_ras(data: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """Reorder an RAS-indexed array (spatial axes first) to ``axcodes``; return data and matching affine."""
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(axcodes)))
    spatial = data.shape[:3]
    out = apply_orientation(data, transform)
    return np.ascontiguousarray(out), affine @ inv_ornt_aff(transform, spatial)


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, *, axcodes: str = "RAS", description: str = "") -> None:
    """Save with a scanner-style header: qform and sform set, millimetre units, no scaling."""
    data, affine = reorient_from_ras(data, affine, axcodes)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_slope_inter(1.0, 0.0)
    if description:
        img.header["descrip"] = description.encode()[:79]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
