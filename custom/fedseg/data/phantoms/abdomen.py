"""Synthetic abdominal CT phantoms.

A phantom is an axial abdominal CT drawn in patient (RAS) millimetres: couch, skin and
subcutaneous fat, abdominal wall muscle, visceral fat, spine with discs and canal, paraspinal
and psoas muscles, aorta and IVC, ribs, liver (with optional tumours), gallbladder, spleen,
kidneys with sinus fat, stomach with fluid and gas, and bowel loops.

Intensities are calibrated against the real CT in ``tests/data/real`` (see its README): spleen
about 33 HU against liver about 45 HU, correlated noise of about 15 HU, fat near -100 HU. Each
case draws its own body size, organ sizes, shapes, positions, HU offsets, noise, voxel spacing
and field of view, so a model has to learn anatomy and texture, not a fixed template.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from fedseg.data.phantoms.grid import Ellipsoid, Grid, Wobble, paint, random_rotation, rotation_z

# Organ codes of the multi-organ label map every phantom carries.
ORGANS: dict[str, int] = {
    "spleen": 1,
    "liver": 2,
    "kidney_right": 3,
    "kidney_left": 4,
    "stomach": 5,
    "gallbladder": 6,
    "aorta": 7,
    "liver_tumour": 8,
}

# Mean HU of each tissue before per-case offsets (non-contrast CT, real-CT calibrated).
TISSUE_HU: dict[str, float] = {
    "air": -1000.0,
    "couch": 250.0,
    "fat": -100.0,
    "visceral_fat": -90.0,
    "muscle": 50.0,
    "spleen": 33.0,
    "liver": 45.0,
    "kidney": 30.0,
    "renal_sinus": -60.0,
    "fluid": 12.0,
    "gas": -950.0,
    "bowel_wall": 40.0,
    "blood": 40.0,
    "cortical_bone": 650.0,
    "cancellous_bone": 220.0,
    "disc": 80.0,
    "csf": 20.0,
}


@dataclass(frozen=True)
class PhantomOptions:
    """Ranges the per-case parameters are drawn from; the defaults give demo-sized volumes."""

    inplane_spacing: tuple[float, float] = (1.3, 1.9)
    slice_thickness: tuple[float, ...] = (2.0, 2.5, 3.0, 4.0, 5.0)
    fov_mm: tuple[float, float] = (360.0, 430.0)
    z_extent_mm: tuple[float, float] = (180.0, 240.0)
    noise_hu: tuple[float, float] = (12.0, 18.0)
    tumours: tuple[int, int] = (0, 0)  # inclusive range of liver tumours per case


@dataclass
class AbdomenPhantom:
    """A phantom on an axis-aligned RAS grid: int16 HU image and uint8 organ map (see ORGANS)."""

    image: np.ndarray
    organs: np.ndarray
    grid: Grid
    params: dict = field(default_factory=dict)


def _correlated_noise(rng: np.random.Generator, shape, sigma_vox: tuple[float, float, float]) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed like CT reconstruction noise."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma_vox, mode="nearest")
    return noise / max(float(noise.std()), 1e-6)


def synth_abdomen(seed: int, options: PhantomOptions = PhantomOptions()) -> AbdomenPhantom:
    """Draw one abdominal CT phantom; the same seed always gives the same phantom."""
    rng = np.random.default_rng(seed)
    sxy = float(rng.uniform(*options.inplane_spacing))
    sz = float(rng.choice(options.slice_thickness))
    nxy = int(round(rng.uniform(*options.fov_mm) / sxy))
    nz = int(round(rng.uniform(*options.z_extent_mm) / sz))
    fov = nxy * sxy
    z_top = 0.0
    grid = Grid((nxy, nxy, nz), (sxy, sxy, sz), (-fov / 2, -fov / 2 - 20.0, z_top - (nz - 1) * sz))

    hu = dict(TISSUE_HU)
    soft_offset = rng.normal(0, 3)  # scanner calibration shifts all soft tissue together
    for tissue in ("muscle", "spleen", "liver", "kidney", "fluid", "bowel_wall", "blood"):
        hu[tissue] += soft_offset + rng.normal(0, 2.5)
    hu["spleen"] = min(hu["spleen"], hu["liver"] - 6.0)  # spleen stays darker than liver

    image = np.full(grid.shape, hu["air"], dtype=np.float32)
    organs = np.zeros(grid.shape, dtype=np.uint8)

    cx, cy = rng.uniform(-15, 15), rng.uniform(-10, 10)
    a, b = rng.uniform(140, 175), rng.uniform(100, 128)
    long_z = 10_000.0  # "infinite" radius along z for cylinders
    zc = z_top - (nz - 1) * sz / 2
    body_wobble = Wobble.random(rng, 0.04, 250.0)

    # Couch under the patient.
    paint(image, Ellipsoid((cx, cy - b - 14.0, zc), (long_z, 3.0, long_z)), grid, hu["couch"])

    body = paint(image, Ellipsoid((cx, cy, zc), (a, b, long_z), wobble=body_wobble), grid, hu["fat"])
    fat_t, wall_t = rng.uniform(12, 35), rng.uniform(8, 14)
    wall = Ellipsoid((cx, cy, zc), (a - fat_t, b - fat_t, long_z), wobble=body_wobble)
    paint(image, wall, grid, hu["muscle"])
    ca, cb = a - fat_t - wall_t, b - fat_t - wall_t
    cavity = paint(image, Ellipsoid((cx, cy, zc), (ca, cb, long_z), wobble=body_wobble), grid, hu["visceral_fat"])

    z_dome = z_top - rng.uniform(5, 25)
    scale = (a / 158.0 + b / 114.0) / 2  # organs scale with body habitus

    # Ribs: thin bony arcs in the wall over the upper abdomen, spared anteriorly.
    rib_pitch = rng.uniform(26, 34)
    x, y, _ = grid.coords((slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, 1)))
    posterior_lateral = ((y - cy) < cb * 0.45) | (np.abs(x - cx) > ca * 0.55)
    for k in range(grid.shape[2]):
        z = grid.origin[2] + k * sz
        if z < z_dome - 140 or ((z - z_dome) % rib_pitch) > 8.0:
            continue
        ring = ((x - cx) / (ca + wall_t * 0.5)) ** 2 + ((y - cy) / (cb + wall_t * 0.5)) ** 2
        rib = (np.abs(ring - 1.0) < 0.05) & posterior_lateral
        image[..., k][rib[..., 0]] = hu["cortical_bone"] * 0.8

    # Spine: paraspinal and psoas muscles first, then vertebral body, discs, canal, posterior elements.
    rv = rng.uniform(17, 22) * scale
    yv = cy - cb + rv + rng.uniform(2, 8)
    for side in (-1, 1):
        paint(image, Ellipsoid((cx + side * 38, yv - rv - 22, zc), (26, 20, long_z)), grid, hu["muscle"], where=body)
        psoas_r = rng.uniform(14, 22) * scale
        paint(image, Ellipsoid((cx + side * (rv + psoas_r * 0.7), yv + 4, grid.origin[2]), (psoas_r, psoas_r * 0.9, 160.0)),
              grid, hu["muscle"], where=cavity)
    paint(image, Ellipsoid((cx, yv, zc), (rv, rv * 0.9, long_z)), grid, hu["cortical_bone"])
    paint(image, Ellipsoid((cx, yv, zc), (rv - 2.5, rv * 0.9 - 2.5, long_z)), grid, hu["cancellous_bone"])
    disc_pitch = rng.uniform(28, 34)
    for zd in np.arange(z_dome + 20, grid.origin[2] - disc_pitch, -disc_pitch):
        paint(image, Ellipsoid((cx, yv, zd), (rv - 1, rv * 0.9 - 1, 4.0)), grid, hu["disc"])
    paint(image, Ellipsoid((cx, yv - rv - 12, zc), (24, 14, long_z)), grid, hu["cortical_bone"] * 0.7)
    paint(image, Ellipsoid((cx, yv - rv - 9, zc), (8, 7, long_z)), grid, hu["csf"])

    # Great vessels in front of the spine.
    ra = rng.uniform(9, 13)
    aorta = paint(image, Ellipsoid((cx - 14, yv + rv + ra + 3, zc), (ra, ra, long_z)), grid, hu["blood"])
    organs[aorta] = ORGANS["aorta"]
    paint(image, Ellipsoid((cx + 24, yv + rv + 11, zc), (12, 10, long_z)), grid, hu["blood"] - 2)

    def organ(name: str, shape: Ellipsoid, tissue: str, where=None, minus: Ellipsoid | None = None) -> np.ndarray:
        mask = np.zeros(grid.shape, dtype=bool)
        hit = shape.mask(grid)
        if hit is None:
            return mask
        box, inside = hit
        inside &= cavity[box] if where is None else where[box]
        if minus is not None:
            inside &= minus.level(*grid.coords(box)) >= 1.0
        mask[box] = inside
        image[mask] = hu[tissue]
        organs[mask] = ORGANS[name]
        return mask

    # Kidneys with sinus fat; the right one sits lower under the liver.
    for name, side, drop in (("kidney_right", 1, rng.uniform(5, 20)), ("kidney_left", -1, 0.0)):
        ks = scale * rng.uniform(0.85, 1.15)
        kc = (cx + side * ca * 0.45, yv + rng.uniform(-5, 10), z_dome - 115 - drop)
        rot = rotation_z(side * np.deg2rad(rng.uniform(15, 35))) @ random_rotation(rng, (10, 10, 5))
        kidney = organ(name, Ellipsoid(kc, (27 * ks, 24 * ks, 52 * ks), rot, Wobble.random(rng, 0.12, 70.0)),
                       "kidney", where=cavity & (organs == 0))
        sinus = Ellipsoid((kc[0] - side * 10 * ks, kc[1] + 4, kc[2]), (9 * ks, 8 * ks, 25 * ks), rot)
        paint(image, sinus, grid, hu["renal_sinus"], where=kidney)

    # Spleen: a crescent along the left posterolateral wall; size varies up to splenomegaly.
    ss = rng.uniform(0.75, 1.35) * scale
    phi = np.deg2rad(rng.uniform(205, 235))
    thick = 24 * ss
    sx0 = cx + (ca - thick * 1.1) * np.cos(phi)
    sy0 = cy + (cb - thick * 1.1) * np.sin(phi)
    sz0 = z_dome - rng.uniform(45, 75)
    rot = rotation_z(phi + np.pi / 2) @ random_rotation(rng, (10, 10, 5))
    spleen_shape = Ellipsoid((sx0, sy0, sz0), (55 * ss, thick, 55 * ss * rng.uniform(0.9, 1.2)), rot,
                             Wobble.random(rng, 0.2, 90.0))
    hilum = Ellipsoid((sx0 - 30 * ss * np.cos(phi), sy0 - 30 * ss * np.sin(phi), sz0),
                      (40 * ss, 18 * ss, 45 * ss), rot)
    organ("spleen", spleen_shape, "spleen", where=cavity & (organs == 0), minus=hilum)

    # Stomach: left upper anterior, fluid below and gas above (patient supine: gas is anterior).
    st = scale * rng.uniform(0.8, 1.2)
    stomach_c = (cx - ca * 0.38, cy + cb * 0.3, z_dome - 55)
    stomach_shape = Ellipsoid(stomach_c, (42 * st, 32 * st, 50 * st), random_rotation(rng, (10, 10, 25)),
                              Wobble.random(rng, 0.15, 80.0))
    free = cavity & (organs == 0)
    stomach = organ("stomach", stomach_shape, "bowel_wall", where=free)
    lumen = ndimage.binary_erosion(stomach, iterations=max(1, int(round(4 / sxy))))
    gas_level = stomach_c[1] + rng.uniform(0, 20) * st
    gas = lumen & (grid.coords((slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, 1)))[1] > gas_level)
    image[lumen] = hu["fluid"]
    image[gas] = hu["gas"]

    # Liver: right upper quadrant, filling the space the retroperitoneal organs leave, with a left lobe.
    ls = scale * rng.uniform(0.85, 1.15)
    liver_wobble = Wobble.random(rng, 0.25, 140.0)
    liver = organ("liver", Ellipsoid((cx + ca * 0.42, cy + cb * 0.02, z_dome - 80 * ls),
                                     (ca * 0.62 * ls, cb * 0.85, 85 * ls), random_rotation(rng, (5, 5, 10)), liver_wobble),
                  "liver", where=cavity & (organs == 0))
    liver |= organ("liver", Ellipsoid((cx - ca * 0.02, cy + cb * 0.45, z_dome - 45 * ls),
                                      (ca * 0.38 * ls, cb * 0.3, 38 * ls), random_rotation(rng, (5, 5, 15)), liver_wobble),
                   "liver", where=cavity & (organs == 0))
    organ("gallbladder", Ellipsoid((cx + ca * 0.22, cy + cb * 0.25, z_dome - 115 * ls), (14, 13, 28),
                                   random_rotation(rng, (20, 20, 20))), "fluid",
          where=cavity & ((organs == 0) | liver))

    # Bowel loops fill what is left of the lower and anterior abdomen.
    for _ in range(int(rng.integers(8, 16))):
        r = rng.uniform(10, 22)
        c = (cx + rng.uniform(-0.7, 0.7) * ca, cy + rng.uniform(-0.1, 0.8) * cb, z_dome - rng.uniform(90, 230))
        free = cavity & (organs == 0)
        loop = paint(image, Ellipsoid(c, (r, r * rng.uniform(0.6, 1.0), r * rng.uniform(1, 2.5)),
                                      random_rotation(rng, (40, 40, 90))), grid, hu["bowel_wall"], where=free)
        inner = ndimage.binary_erosion(loop, iterations=max(1, int(round(3 / sxy))))
        image[inner] = hu["gas"] if rng.random() < 0.35 else hu["fluid"] + rng.normal(0, 5)

    tumours = _liver_tumours(rng, image, organs, grid, liver, hu, options.tumours)

    # Partial volume at edges, then reconstruction-like correlated noise.
    image = ndimage.gaussian_filter(image, (0.6, 0.6, 0.35), mode="nearest")
    noise_hu = float(rng.uniform(*options.noise_hu))
    image += noise_hu * _correlated_noise(rng, grid.shape, (0.8, 0.8, 0.3))
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)

    params = {"spacing": grid.spacing, "shape": grid.shape, "noise_hu": noise_hu, "tumours": tumours,
              "hu_spleen": hu["spleen"], "hu_liver": hu["liver"]}
    return AbdomenPhantom(image=image, organs=organs, grid=grid, params=params)


def _liver_tumours(rng, image, organs, grid: Grid, liver: np.ndarray, hu: dict, count_range) -> int:
    """Lesions inside the liver, mostly hypo-dense, some nearly iso-dense; returns how many were drawn."""
    lo, hi = count_range
    count = int(rng.integers(lo, hi + 1)) if hi > 0 else 0
    inside = np.argwhere(ndimage.binary_erosion(liver, iterations=3))
    drawn = 0
    for _ in range(count):
        if inside.size == 0:
            break
        i, j, k = inside[rng.integers(len(inside))]
        center = tuple(float(o + s * v) for o, s, v in zip(grid.origin, grid.spacing, (i, j, k)))
        r = rng.uniform(8, 25)
        # Hypo-dense as in portal-venous MSD scans (30-60 HU under the liver), one in four nearly iso-dense.
        contrast = rng.uniform(-60, -30) if rng.random() < 0.75 else rng.uniform(-16, -8)
        shape = Ellipsoid(center, (r, r * rng.uniform(0.7, 1.0), r * rng.uniform(0.7, 1.2)),
                          random_rotation(rng, (30, 30, 30)), Wobble.random(rng, 0.15, 30.0))
        mask = paint(image, shape, grid, hu["liver"] + contrast, where=liver)
        if mask.any():
            organs[mask] = ORGANS["liver_tumour"]
            drawn += 1
    return drawn
