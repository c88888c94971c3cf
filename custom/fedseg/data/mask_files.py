"""Label masks kept as NIfTI or NRRD files (MONAI's readers), matched to images by their grid.

A mask carries no reference to the DICOM series it was drawn on, so it is matched by geometry:
the mask belongs to the imported volume whose grid it shares (shape, and affine within
``GRID_TOL_MM``), after its axes are flipped or permuted to the volume's orientation (a mask saved
in RAS order still matches an LPS volume). Masks are never resampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.transforms import LoadImage
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from fedseg.errors import DataError

MASK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr")
GRID_TOL_MM = 0.01  # as fedseg data check's grid_mismatch


def is_mask_file(path: Path) -> bool:
    return any(path.name.lower().endswith(s) for s in MASK_SUFFIXES)


@dataclass(frozen=True)
class MaskFile:
    """A class-index mask and its voxel-to-RAS affine."""

    shown: str
    data: np.ndarray
    affine: np.ndarray


def read_mask(path: Path, shown: str) -> MaskFile:
    """Read a 3D NIfTI or NRRD mask of whole non-negative class indices.

    Raises:
        DataError: unreadable, not 3D, or values that are not class indices (names the file).
    """
    try:
        img = LoadImage(image_only=True, dtype=None)(str(path))
    except Exception as exc:  # noqa: BLE001 - MONAI wraps every reader's error differently
        raise DataError(f"{shown}: cannot read mask ({type(exc).__name__}: {exc})") from None
    data = np.asarray(img)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{shown}: mask has shape {data.shape}; a label mask must be 3D")
    if not np.all(np.isfinite(data)) or np.any(data < 0) or np.any(data != np.round(data)) or data.max() > 255:
        raise DataError(f"{shown}: mask values must be whole class indices 0..255")
    return MaskFile(shown, data.astype(np.uint8), np.asarray(img.affine, dtype=float))


def on_grid(mask: MaskFile, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray | None:
    """The mask's values on the grid (``shape``, ``affine``) if it lies on it, else None."""
    transform = ornt_transform(io_orientation(mask.affine), io_orientation(affine))
    data = apply_orientation(mask.data, transform)
    moved = mask.affine @ inv_ornt_aff(transform, mask.data.shape)
    if data.shape != tuple(shape) or np.abs(moved - affine).max() > GRID_TOL_MM:
        return None
    return np.ascontiguousarray(data)
