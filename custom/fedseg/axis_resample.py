"""Trilinear resampling between grids whose axes are parallel, as three small matrix products.

Orientation to RAS and respacing only permute, flip and scale a volume's axes, so the map from
the network's grid back to an input's grid moves each axis along one axis of the other grid.
Trilinear interpolation is then separable: one matrix per axis, two weights per row. MONAI's
``ResampleToMatch`` builds a coordinate for every output voxel (``affine_grid``) and gathers
eight neighbours for each (``grid_sample``); on the input's full-resolution grid that was a third
of ``fedseg infer``'s time (bench/README.md, "Profile"). The values are those of MONAI's bilinear
resampling with zero padding and ``align_corners=False`` (voxel centres at integer indices):
tests/test_axis_resample.py compares the two.
"""

from __future__ import annotations

import numpy as np
import torch

# Relative size of an off-axis entry below which an affine counts as moving along one axis only.
AXIS_TOLERANCE = 1e-6
PADDINGS = ("zeros", "border")


def axis_permutation(xform: np.ndarray) -> tuple[int, ...] | None:
    """For each destination axis, the source axis ``xform`` moves it along; None when it mixes axes.

    ``xform`` maps destination voxel indices to source voxel indices (homogeneous, 4 x 4 in 3D).
    """
    m = np.asarray(xform, dtype=np.float64)[:-1, :-1]
    perm = tuple(int(i) for i in np.abs(m).argmax(0))
    if sorted(perm) != list(range(len(perm))):
        return None
    off_axis = m.copy()
    off_axis[list(perm), list(range(len(perm)))] = 0.0
    return perm if np.abs(off_axis).max() <= AXIS_TOLERANCE * np.abs(m).max() else None


def linear_weights(n_out: int, n_in: int, scale: float, offset: float, padding: str = "zeros",
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n_out, n_in) linear-interpolation matrix sampling index ``scale * j + offset`` for output ``j``.

    ``padding``: ``"zeros"`` (neighbours outside ``0..n_in - 1`` contribute nothing) or ``"border"``
    (positions outside are moved onto the nearest edge voxel), as ``grid_sample``'s modes.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, not {padding!r}")
    x = scale * np.arange(n_out, dtype=np.float64) + offset
    if padding == "border":
        x = np.clip(x, 0.0, n_in - 1.0)
    lower = np.floor(x)
    frac = x - lower
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    for index, weight in ((lower, 1.0 - frac), (lower + 1.0, frac)):
        inside = (index >= 0) & (index < n_in)
        np.add.at(weights, (rows[inside], index[inside].astype(np.int64)), weight[inside])
    return torch.from_numpy(weights).to(dtype)


def resample_parallel_axes(image: torch.Tensor, xform: np.ndarray, out_shape: tuple[int, ...], *,
                           padding: str = "zeros", dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """``image`` (channels, *spatial) sampled trilinearly on a grid of ``out_shape``, computed in ``dtype``.

    ``xform`` maps output voxel indices to ``image``'s voxel indices. Returns None when it does
    not move each axis along one axis (an oblique map): use MONAI's resampling then.
    """
    xform = np.asarray(xform, dtype=np.float64)
    perm = axis_permutation(xform)
    if perm is None:
        return None
    out = image.permute(0, *(1 + p for p in perm))
    matrices = []
    for axis, source in enumerate(perm):
        weights = linear_weights(out_shape[axis], out.shape[1 + axis], xform[source, axis], xform[source, -1],
                                 padding, dtype)
        used = torch.nonzero(weights.any(0)).flatten()
        lo, hi = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 1)
        out = out.narrow(1 + axis, lo, hi - lo)  # only the voxels some output voxel reads
        matrices.append(weights[:, lo:hi])
    out = out.to(dtype)
    # The axis that shrinks most first: each product then works on the least data.
    for axis in sorted(range(len(perm)), key=lambda a: matrices[a].shape[0] / matrices[a].shape[1]):
        out = torch.movedim(torch.tensordot(matrices[axis], out, dims=([1], [1 + axis])), 0, 1 + axis)
    return out.contiguous()
