"""Stacking one DICOM image series into a volume: slice order, geometry checks, HU, resampling.

Rules (also in the README, "DICOM in, DICOM SEG out"):

- slices are sorted by their position along the slice normal (ImagePositionPatient projected on
  the cross product of the ImageOrientationPatient cosines), never by InstanceNumber or file name;
- fatal for the series (it is not imported): mixed orientations, slices of different size or
  pixel spacing, two slices at one position, fewer than ``MIN_SLICES`` slices, missing slices (a
  gap of more than 1.5 times the usual spacing), pixel data that cannot be decoded;
- resampled, with a warning: gantry tilt (slices stacked obliquely) and irregular spacing within
  half a slice, onto an orthogonal grid at the median spacing (linear for images, nearest for
  labels), as dcm2niix does;
- stored values go through the modality transform (rescale slope and intercept), so CT is in HU.

The volume is indexed like the DICOM pixel matrix turned into NIfTI order: axis 0 runs along a
row (columns), axis 1 down the rows, axis 2 along the normal; the affine maps to RAS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.pixels import apply_rescale
from scipy import ndimage

from fedseg.data.dicom_scan import DicomFile, Series
from fedseg.data.problems import ProblemReport

MIN_SLICES = 3
ORIENTATION_TOL = 1e-3  # direction cosines: DS strings carry about 6 digits
POSITION_TOL_MM = 0.01
SPACING_RTOL = 0.01  # spacings within 1% count as regular (highdicom's default)
GAP_FACTOR = 1.5  # a step this many times the usual spacing means slices are missing
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class SeriesGeometry:
    """Where a series' slices lie, sorted along the normal, and the regular grid it is written on."""

    files: tuple[DicomFile, ...]  # sorted along the normal
    row_dir: np.ndarray  # LPS unit vector along a row (increasing column index)
    col_dir: np.ndarray  # LPS unit vector down a column (increasing row index)
    normal: np.ndarray
    pixel_spacing: tuple[float, float]  # (between columns, between rows) in mm: the volume's axes 0 and 1
    positions: np.ndarray  # (n, 3) LPS ImagePositionPatient of the sorted slices
    depths: np.ndarray  # (n,) positions along the normal
    spacing: float  # slice spacing of the written grid
    resampled: tuple[str, ...]  # why the grid differs from the slices ("gantry_tilt", "irregular_spacing")

    @property
    def shape(self) -> tuple[int, int, int]:
        ds = self.files[0].ds
        n = int(round((self.depths[-1] - self.depths[0]) / self.spacing)) + 1 if self.resampled else len(self.files)
        return int(ds.Columns), int(ds.Rows), n

    @property
    def affine(self) -> np.ndarray:
        """Voxel to RAS millimetres, for NIfTI."""
        lps = np.eye(4)
        lps[:3, 0] = self.row_dir * self.pixel_spacing[0]
        lps[:3, 1] = self.col_dir * self.pixel_spacing[1]
        lps[:3, 2] = self.normal * self.spacing
        lps[:3, 3] = self.positions[0]
        return LPS_TO_RAS @ lps

    @property
    def in_plane_shifts(self) -> np.ndarray:
        """(n, 2) offset of each slice's first pixel from the first slice's, in pixels (columns, rows)."""
        offsets = self.positions - self.positions[0]
        return np.stack([offsets @ self.row_dir / self.pixel_spacing[0],
                         offsets @ self.col_dir / self.pixel_spacing[1]], axis=1)


def _floats(ds, key: str) -> np.ndarray:
    return np.asarray([float(v) for v in ds.get(key)], dtype=float)


def check_geometry(series: Series, report: ProblemReport) -> SeriesGeometry | None:
    """Sort a series' slices and check they form a volume; None (problems recorded) when they cannot."""
    where = series.shown
    files = series.files
    if len(files) < MIN_SLICES:
        report.add("too_few_slices", where, f"{len(files)} image slice(s); a volume needs at least {MIN_SLICES}")
        return None
    orientations = np.stack([_floats(f.ds, "ImageOrientationPatient") for f in files])
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOL:
        distinct = len({tuple(np.round(o, 3)) for o in orientations})
        report.add("mixed_orientation", where, f"slices in {distinct} different orientations "
                                               f"(ImageOrientationPatient); cannot stack them into one volume")
        return None
    sizes = {(int(f.ds.Rows), int(f.ds.Columns), *np.round(_floats(f.ds, "PixelSpacing"), 4)) for f in files}
    if len(sizes) > 1:
        report.add("inconsistent_slices", where, f"slices differ in size or pixel spacing: {sorted(sizes)}")
        return None
    row_dir, col_dir = orientations[0][:3], orientations[0][3:]
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    positions = np.stack([_floats(f.ds, "ImagePositionPatient") for f in files])
    depths = positions @ normal
    order = np.argsort(depths, kind="stable")
    files, positions, depths = [files[i] for i in order], positions[order], depths[order]
    steps = np.diff(depths)
    if np.any(steps < POSITION_TOL_MM):
        report.add("duplicate_positions", where, f"{int(np.sum(steps < POSITION_TOL_MM)) + 1} slices share a position "
                                                 f"(several acquisitions, echoes or time points in one series?)")
        return None
    spacing = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * spacing)
    if gaps.size:
        shown = "; ".join(f"{steps[i]:.2f} mm between slices {i + 1} and {i + 2} of {len(files)} "
                          f"(about {int(round(steps[i] / spacing)) - 1} missing)" for i in gaps[:5])
        report.add("missing_slices", where, f"slice spacing is {spacing:.2f} mm but there are gaps: {shown}; "
                                            f"re-export the complete series")
        return None
    resampled = []
    pixel_spacing = _floats(files[0].ds, "PixelSpacing")[::-1]  # DICOM gives (between rows, between columns)
    shifts = (positions - positions[0]) - np.outer(depths - depths[0], normal)
    tilt = float(np.degrees(np.arctan2(np.linalg.norm(shifts[-1]), depths[-1] - depths[0])))
    if np.linalg.norm(shifts, axis=1).max() > POSITION_TOL_MM and abs(tilt) > 0.05:
        resampled.append("gantry_tilt")
        report.add("gantry_tilt", where, f"slices are stacked {tilt:.1f} degrees off their normal (gantry tilt); "
                                         f"resampled onto an orthogonal grid", fatal=False)
    if np.abs(steps - spacing).max() > SPACING_RTOL * spacing:
        resampled.append("irregular_spacing")
        report.add("irregular_spacing", where, f"slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm; "
                                               f"resampled to {spacing:.3f} mm", fatal=False)
    return SeriesGeometry(tuple(files), row_dir, col_dir, normal, (float(pixel_spacing[0]), float(pixel_spacing[1])),
                          positions, depths, spacing, tuple(resampled))


def read_slices(geometry: SeriesGeometry) -> np.ndarray:
    """The sorted slices' values after the modality transform, shape (columns, rows, slices).

    int16 when every slice's slope and intercept are whole numbers and the values fit (CT in HU),
    float32 otherwise.

    Raises:
        ValueError: a file's pixel data cannot be decoded (names the file and its transfer syntax).
    """
    first = geometry.files[0].ds
    # float32 holds every whole HU value exactly; one slice at a time keeps memory to the volume itself.
    volume = np.empty((int(first.Columns), int(first.Rows), len(geometry.files)), dtype=np.float32)
    whole = True
    for k, f in enumerate(geometry.files):
        try:
            stored = f.ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - pydicom's decoders raise many types; the message says which file
            syntax = getattr(f.ds.file_meta.get("TransferSyntaxUID"), "name", "unknown transfer syntax")
            raise ValueError(f"{f.shown}: cannot decode pixel data ({syntax}): {exc}; "
                             f"install the decoders with pip install 'fedseg[dicom]'") from None
        slope, intercept = float(f.ds.get("RescaleSlope", 1) or 1), float(f.ds.get("RescaleIntercept", 0) or 0)
        whole &= slope.is_integer() and intercept.is_integer()
        volume[:, :, k] = apply_rescale(stored, f.ds).T
        f.ds.pop("PixelData", None)  # decoded; keep memory to one slice's headers
    if whole and volume.min() >= np.iinfo(np.int16).min and volume.max() <= np.iinfo(np.int16).max:
        return volume.astype(np.int16)
    return volume


def to_regular_grid(volume: np.ndarray, geometry: SeriesGeometry, *, label: bool = False) -> np.ndarray:
    """Resample a slice stack (as read) onto the geometry's orthogonal, evenly spaced grid.

    Each output slice is interpolated between the two source slices around its depth, each shifted
    in plane by its offset from the first slice (the tilt); labels take the nearest source slice.
    """
    if not geometry.resampled:
        return volume
    fill = 0 if label else float(volume.min())
    shifts = geometry.in_plane_shifts
    out = np.empty(geometry.shape, dtype=volume.dtype)
    targets = geometry.depths[0] + geometry.spacing * np.arange(geometry.shape[2])
    for t, depth in enumerate(targets):
        hi = int(np.clip(np.searchsorted(geometry.depths, depth), 1, len(geometry.depths) - 1))
        lo = hi - 1
        w = (depth - geometry.depths[lo]) / (geometry.depths[hi] - geometry.depths[lo])
        if label:
            k = hi if w >= 0.5 else lo
            out[..., t] = ndimage.shift(volume[..., k], shifts[k], order=0, cval=fill)
            continue
        a = ndimage.shift(volume[..., lo].astype(np.float32), shifts[lo], order=1, cval=fill)
        b = ndimage.shift(volume[..., hi].astype(np.float32), shifts[hi], order=1, cval=fill)
        mixed = (1 - w) * a + w * b
        out[..., t] = np.round(mixed) if np.issubdtype(out.dtype, np.integer) else mixed
    return out


def to_source_slices(volume: np.ndarray, geometry: SeriesGeometry) -> np.ndarray:
    """A label on the regular grid back on the series' own slices (nearest), shape (columns, rows, n)."""
    if not geometry.resampled:
        return volume
    shifts = geometry.in_plane_shifts
    out = np.zeros((*volume.shape[:2], len(geometry.files)), dtype=volume.dtype)
    for k, depth in enumerate(geometry.depths):
        t = int(np.clip(round((depth - geometry.depths[0]) / geometry.spacing), 0, volume.shape[2] - 1))
        out[..., k] = ndimage.shift(volume[..., t], -shifts[k], order=0, cval=0)
    return out
