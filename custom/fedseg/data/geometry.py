"""Voxel geometry as MONAI will see it: spacing, invertibility, shear, and the grid after resampling.

Spacing is taken from the affine's column lengths (as MONAI's ``Spacingd`` does), not from the
header's ``pixdim``, which nibabel may "repair".
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import io_orientation

from fedseg.data.nifti_scan import FileProblem, NiftiHeader
from fedseg.tasks.spec import TaskSpec

SINGULAR_TOLERANCE = 1e-6  # |det| of the direction matrix (unit columns): 0 = axes in one plane
SHEAR_TOLERANCE = 1e-3  # largest |cos| between two voxel axes (1e-3 is 0.06 degrees off square)
QFORM_SFORM_TOLERANCE_MM = 1e-2  # as for image vs label affines: float noise, not a voxel


def zooms_of(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing along each voxel axis, from the affine's columns."""
    return np.linalg.norm(affine[:3, :3], axis=0)


def _shown(values) -> str:
    return " x ".join(f"{v:.3g}" for v in values)


def check_affine(hdr: NiftiHeader, spec: TaskSpec, what: str) -> np.ndarray:
    """Return the spacing, or raise :class:`FileProblem` for an affine the transforms cannot use.

    Refused: non-finite entries, spacing outside the task's plausible range, a singular
    (non-invertible) affine, and shear (voxel axes not at right angles).
    """
    affine = hdr.affine
    if not np.all(np.isfinite(affine)):
        raise FileProblem("bad_affine", f"{what} has NaN or infinite values in its affine (sform/qform)")
    zooms = zooms_of(affine)
    low, high = spec.spacing_range
    if np.any(zooms < low * (1 - 1e-6)) or np.any(zooms > high * (1 + 1e-6)):  # float noise at the bounds
        raise FileProblem("bad_spacing", f"voxel spacing {_shown(zooms)} mm (from the affine) is outside the "
                                         f"plausible range for task {spec.name!r}: {low:g} to {high:g} mm per axis")
    directions = affine[:3, :3] / zooms
    if abs(float(np.linalg.det(directions))) < SINGULAR_TOLERANCE:
        raise FileProblem("bad_affine", f"{what}'s affine is singular (its voxel axes lie in one plane): "
                                        f"it cannot be inverted or reoriented")
    cosines = np.abs(directions.T @ directions - np.eye(3))
    if float(cosines.max()) > SHEAR_TOLERANCE:
        angle = float(np.degrees(np.arcsin(min(1.0, cosines.max()))))
        raise FileProblem("sheared_affine", f"{what}'s voxel axes are {angle:.2g} degrees off square (shear, e.g. "
                                            f"uncorrected gantry tilt); resample it to an orthogonal grid first")
    return zooms


def qform_sform_disagreement(hdr: NiftiHeader) -> float | None:
    """Largest difference (mm) between qform and sform when both are set, else None."""
    header = hdr.header
    if int(header["qform_code"]) <= 0 or int(header["sform_code"]) <= 0:
        return None
    qform, sform = header.get_qform(), header.get_sform()
    if not (np.all(np.isfinite(qform)) and np.all(np.isfinite(sform))):
        return float("inf")
    return float(np.max(np.abs(qform - sform)))


def target_spacing(spec: TaskSpec) -> np.ndarray:
    """Spacing after ``Spacingd`` per RAS axis; NaN (a 2D task's slice axis): kept as it is."""
    return np.array([*spec.spacing, *([np.nan] * (3 - len(spec.spacing)))], dtype=float)


def resampled_extent(voxels: np.ndarray, affine: np.ndarray, zooms: np.ndarray, spec: TaskSpec) -> np.ndarray:
    """Voxels per RAS axis after reorientation and resampling to the task's spacing.

    ``voxels`` counts voxels along each file axis (a whole grid, or a foreground box).
    """
    target = target_spacing(spec)
    out = np.empty(3)
    for axis, (ras_axis, _flip) in enumerate(io_orientation(affine)):
        ras = int(ras_axis)
        step = target[ras] if np.isfinite(target[ras]) else zooms[axis]
        out[ras] = voxels[axis] * zooms[axis] / step
    return out


def resampling_block(affine: np.ndarray, zooms: np.ndarray, spec: TaskSpec) -> tuple[int, int, int]:
    """Voxels per file axis of a block that always holds a sample point of the task's grid.

    Resampling samples every ``target`` mm; a run of ``ceil(target / zoom) + 1`` voxels spans
    at least ``target`` mm between its first and last voxel centres, so a sample point falls
    between two of them. If a whole block of that size lies above a threshold, so does the
    (bilinearly interpolated) value at that point: something is sure to survive resampling.
    """
    target = target_spacing(spec)
    block = [1, 1, 1]
    for axis, (ras_axis, _flip) in enumerate(io_orientation(affine)):
        step = target[int(ras_axis)]
        block[axis] = int(np.ceil(step / zooms[axis] - 1e-9)) + 1 if np.isfinite(step) else 1
    return block[0], block[1], block[2]
