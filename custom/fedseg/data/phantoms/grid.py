"""Voxel grids in patient (RAS, millimetre) coordinates and smooth random shapes on them.

Phantoms are drawn on an axis-aligned RAS grid: index ``(i, j, k)`` sits at world position
``origin + (i, j, k) * spacing``. Shapes are implicit functions of world position, so the
anatomy does not depend on voxel size, and each shape is evaluated only inside its bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """An axis-aligned RAS voxel grid."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def affine(self) -> np.ndarray:
        aff = np.diag([*self.spacing, 1.0])
        aff[:3, 3] = self.origin
        return aff

    def box(self, center, half_extent) -> tuple[slice, slice, slice] | None:
        """Index slices covering ``center +- half_extent`` (mm), or None if outside the grid."""
        slices = []
        for c, h, o, s, n in zip(center, half_extent, self.origin, self.spacing, self.shape):
            lo = max(0, int(np.floor((c - h - o) / s)))
            hi = min(n, int(np.ceil((c + h - o) / s)) + 1)
            if hi <= lo:
                return None
            slices.append(slice(lo, hi))
        return tuple(slices)

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates (broadcastable arrays, mm) of the voxels in ``box``."""
        axes = []
        for dim, (sl, o, s) in enumerate(zip(box, self.origin, self.spacing)):
            values = (o + s * np.arange(sl.start, sl.stop, dtype=np.float32)).astype(np.float32)
            shape = [1, 1, 1]
            shape[dim] = values.size
            axes.append(values.reshape(shape))
        return axes[0], axes[1], axes[2]


def rotation_z(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)


def random_rotation(rng: np.random.Generator, max_deg: tuple[float, float, float]) -> np.ndarray:
    """A rotation by small random angles about x, y and z (degrees bounded per axis)."""
    ax, ay, az = (np.deg2rad(rng.uniform(-m, m)) for m in max_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]], dtype=np.float32)
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]], dtype=np.float32)
    return (rotation_z(az) @ ry @ rx).astype(np.float32)


@dataclass(frozen=True)
class Wobble:
    """A smooth random field (a few low-frequency waves) that makes shapes irregular."""

    freqs: np.ndarray  # (n, 3) cycles per mm
    phases: np.ndarray  # (n,)
    amps: np.ndarray  # (n,)

    @staticmethod
    def random(rng: np.random.Generator, amplitude: float, wavelength_mm: float, n: int = 4) -> "Wobble":
        directions = rng.normal(size=(n, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        freqs = directions / (wavelength_mm * rng.uniform(0.7, 1.4, size=(n, 1)))
        return Wobble(
            freqs.astype(np.float32),
            rng.uniform(0, 2 * np.pi, n).astype(np.float32),
            (amplitude * rng.uniform(0.5, 1.0, n) / np.sqrt(n)).astype(np.float32),
        )

    def __call__(self, x, y, z) -> np.ndarray:
        out = 0.0
        for (fx, fy, fz), ph, a in zip(self.freqs, self.phases, self.amps):
            out = out + a * np.sin(2 * np.pi * (fx * x + fy * y + fz * z) + ph)
        return out


@dataclass(frozen=True)
class Ellipsoid:
    """A rotated ellipsoid, optionally wobbled: inside where the level function is below 1."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    rotation: np.ndarray | None = None
    wobble: Wobble | None = None

    @property
    def half_extent(self) -> tuple[float, float, float]:
        r = max(self.radii) * 1.25
        return (r, r, r) if self.rotation is not None else tuple(x * 1.25 for x in self.radii)

    def level(self, x, y, z) -> np.ndarray:
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        if self.rotation is not None:
            r = self.rotation.T  # world -> body frame
            dx, dy, dz = (r[0, 0] * dx + r[0, 1] * dy + r[0, 2] * dz,
                          r[1, 0] * dx + r[1, 1] * dy + r[1, 2] * dz,
                          r[2, 0] * dx + r[2, 1] * dy + r[2, 2] * dz)
        value = (dx / self.radii[0]) ** 2 + (dy / self.radii[1]) ** 2 + (dz / self.radii[2]) ** 2
        if self.wobble is not None:
            value = value + self.wobble(x, y, z)
        return value

    def mask(self, grid: Grid) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        """The voxels inside, as ``(box, boolean mask over box)``; None if it misses the grid."""
        box = grid.box(self.center, self.half_extent)
        if box is None:
            return None
        return box, self.level(*grid.coords(box)) < 1.0


def paint(volume: np.ndarray, shape, grid: Grid, value, where: np.ndarray | None = None) -> np.ndarray:
    """Write ``value`` into ``volume`` inside ``shape`` (and inside ``where`` if given); return the full mask."""
    full = np.zeros(volume.shape, dtype=bool)
    hit = shape.mask(grid)
    if hit is None:
        return full
    box, inside = hit
    if where is not None:
        inside = inside & where[box]
    volume[box][inside] = value
    full[box] = inside
    return full


@dataclass(frozen=True)
class Capsule:
    """A tube of ``radius`` mm around the segment ``start``-``end`` (vessels, bowel, ribs' cartilage)."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float

    def mask(self, grid: Grid) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        """The voxels inside, as ``(box, boolean mask over box)``; None if it misses the grid."""
        p0, p1 = np.asarray(self.start, np.float32), np.asarray(self.end, np.float32)
        center = (p0 + p1) / 2
        half = np.abs(p1 - p0) / 2 + self.radius
        box = grid.box(tuple(center), tuple(half))
        if box is None:
            return None
        x, y, z = grid.coords(box)
        d = p1 - p0
        length2 = float(d @ d) or 1e-6
        t = np.clip(((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / length2, 0.0, 1.0)
        dist2 = (x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2
        return box, dist2 < self.radius ** 2


def tube(points, radius, grid: Grid) -> np.ndarray:
    """The full-grid mask of a polyline of capsules through ``points``; ``radius`` per point or one value."""
    radii = np.broadcast_to(np.asarray(radius, dtype=np.float32), (len(points),))
    full = np.zeros(grid.shape, dtype=bool)
    for k in range(len(points) - 1):
        hit = Capsule(tuple(points[k]), tuple(points[k + 1]), float((radii[k] + radii[k + 1]) / 2)).mask(grid)
        if hit is not None:
            box, inside = hit
            full[box] |= inside
    return full


def shape_mask(shape, grid: Grid) -> np.ndarray:
    """The full-grid boolean mask of any shape with a ``mask(grid)`` method."""
    full = np.zeros(grid.shape, dtype=bool)
    hit = shape.mask(grid)
    if hit is not None:
        box, inside = hit
        full[box] = inside
    return full
