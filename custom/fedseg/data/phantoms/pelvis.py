"""Synthetic pelvic MRI phantoms (T2-weighted and ADC) with prostate zones, as MSD Task05 stores them.

Axial slices with prostate-MRI anisotropy (about 0.6 x 0.6 mm in plane, 3-4 mm slices): body
outline, subcutaneous and pelvic fat, obturator and gluteal muscles, pubic bone and femoral heads
(dark cortex, fatty marrow), bladder, rectum, seminal vesicles, and the prostate: a transition
zone (central gland, intermediate T2, low ADC) that sits anteriorly and superiorly, wrapped
posteriorly and laterally by the peripheral zone (bright T2, high ADC), inside a thin dark capsule.

Signal levels follow typical 3 T appearances (T2 in arbitrary units, ADC in 10^-6 mm^2/s); each
case draws its own anatomy, zone sizes, a global T2 gain (MR units are arbitrary), a smooth coil
bias field, and Rician noise, so intensity normalisation and anatomy both matter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from fedseg.data.phantoms.grid import Ellipsoid, Grid, Wobble, paint, random_rotation, rotation_z

ZONES = {"PZ": 1, "TZ": 2}  # MSD Task05 label values

# (T2 signal, ADC) per tissue.
SIGNAL: dict[str, tuple[float, float]] = {
    "air": (0.0, 0.0),
    "fat": (800.0, 250.0),
    "muscle": (260.0, 1400.0),
    "cortex": (60.0, 300.0),
    "marrow": (650.0, 400.0),
    "urine": (1700.0, 2900.0),
    "rectal_wall": (380.0, 1250.0),
    "gas": (20.0, 0.0),
    "seminal": (1100.0, 1900.0),
    "capsule": (230.0, 1300.0),
    "pz": (1000.0, 1700.0),
    "tz": (520.0, 1150.0),
    "urethra": (1200.0, 2000.0),
}


@dataclass
class PelvisPhantom:
    """T2 and ADC (RAS-indexed, stacked on the last axis) with a PZ/TZ label map."""

    image: np.ndarray  # (X, Y, Z, 2) int16: T2, ADC
    label: np.ndarray  # (X, Y, Z) uint8: 0 background, 1 PZ, 2 TZ
    grid: Grid
    params: dict = field(default_factory=dict)


def synth_pelvis(seed: int) -> PelvisPhantom:
    """Draw one prostate MRI phantom; the same seed always gives the same phantom."""
    rng = np.random.default_rng(seed)
    sxy = float(rng.uniform(0.55, 0.8))
    sz = float(rng.choice([3.0, 3.6, 4.0]))
    nxy = int(round(rng.uniform(170, 210) / sxy))
    nz = int(round(rng.uniform(64, 84) / sz))
    fov = nxy * sxy
    grid = Grid((nxy, nxy, nz), (sxy, sxy, sz), (-fov / 2, -fov / 2, -(nz - 1) * sz / 2))
    long_z = 10_000.0

    t2 = np.zeros(grid.shape, np.float32)
    adc = np.zeros(grid.shape, np.float32)
    label = np.zeros(grid.shape, np.uint8)

    def put(shape: Ellipsoid, tissue: str, where=None) -> np.ndarray:
        mask = paint(t2, shape, grid, SIGNAL[tissue][0] * rng.uniform(0.92, 1.08), where=where)
        adc[mask] = SIGNAL[tissue][1] * rng.uniform(0.92, 1.08)
        return mask

    a, b = rng.uniform(150, 185), rng.uniform(100, 125)
    cx, cy = rng.uniform(-8, 8), rng.uniform(-8, 8)
    wob = Wobble.random(rng, 0.03, 200.0)
    body = put(Ellipsoid((cx, cy, 0.0), (a, b, long_z), wobble=wob), "fat")
    # Coverage is centred on the prostate; the body is wider than the field of view, as in real scans.
    for side in (-1, 1):
        glute = Ellipsoid((cx + side * 78, cy - 62, 0.0), (48, 32, long_z), random_rotation(rng, (0, 0, 25)),
                          Wobble.random(rng, 0.08, 90))
        put(glute, "muscle", body)
        head = Ellipsoid((cx + side * 86, cy + 16, rng.uniform(5, 25)), (24, 24, 24))
        put(head, "cortex", body)
        put(Ellipsoid(head.center, (21, 21, 21)), "marrow", body)
        put(Ellipsoid((cx + side * 58, cy + 4, 0.0), (9, 30, long_z), random_rotation(rng, (0, 0, 12))), "muscle", body)

    # Pubic symphysis anterior to the prostate, across the lower slices.
    pubis_y = cy + rng.uniform(38, 48)
    for side in (-1, 1):
        put(Ellipsoid((cx + side * 14, pubis_y, -20.0), (12, 9, 30)), "cortex", body)
        put(Ellipsoid((cx + side * 14, pubis_y, -20.0), (9, 6, 27)), "marrow", body)

    # Prostate and neighbours.
    size = rng.uniform(0.8, 1.3)
    pr = (22 * size * rng.uniform(0.9, 1.1), 17 * size * rng.uniform(0.9, 1.1), 21 * size * rng.uniform(0.9, 1.1))
    pc = (cx + rng.uniform(-4, 4), pubis_y - 14 - pr[1] - rng.uniform(0, 6), rng.uniform(-8, 4))
    rot = random_rotation(rng, (12, 8, 10))
    rectum_c = (pc[0] + rng.uniform(-5, 5), pc[1] - pr[1] - 14, pc[2])
    rectum = put(Ellipsoid(rectum_c, (17, 12, long_z), random_rotation(rng, (5, 5, 20)), Wobble.random(rng, 0.1, 60)),
                 "rectal_wall", body)
    lumen = ndimage.binary_erosion(rectum, iterations=max(1, int(round(3 / sxy))))
    t2[lumen] = SIGNAL["gas"][0] if rng.random() < 0.5 else 450.0
    adc[lumen] = 0.0 if rng.random() < 0.5 else 900.0
    bladder_r = rng.uniform(25, 45)
    put(Ellipsoid((pc[0], pc[1] + 8, pc[2] + pr[2] + bladder_r * 0.8), (bladder_r * 1.2, bladder_r, bladder_r),
                  wobble=Wobble.random(rng, 0.08, 80)), "urine", body)
    for side in (-1, 1):
        put(Ellipsoid((pc[0] + side * 14, pc[1] - 8, pc[2] + pr[2] + 4), (13, 6, 9), random_rotation(rng, (10, 10, 30)),
                      Wobble.random(rng, 0.2, 15)), "seminal", body)

    for side in (-1, 1):  # levator ani slings around the gland and rectum
        put(Ellipsoid((pc[0] + side * (pr[0] + 9), pc[1] - 10, pc[2] - 5), (4, 20, 40), rotation_z(side * 0.5)),
            "muscle", body)
    capsule = Ellipsoid(pc, tuple(r + 1.5 for r in pr), rot, Wobble.random(rng, 0.05, 60))
    put(capsule, "capsule", body)
    gland = put(Ellipsoid(pc, pr, rot, capsule.wobble), "pz", body)
    # Transition zone: anterior and superior in the gland; it grows with age (benign hyperplasia).
    tz_frac = rng.uniform(0.5, 0.78)
    tz_c = (pc[0], pc[1] + pr[1] * 0.22, pc[2] + pr[2] * 0.2)
    tz = paint(t2, Ellipsoid(tz_c, (pr[0] * tz_frac, pr[1] * tz_frac, pr[2] * tz_frac), rot, Wobble.random(rng, 0.12, 25)),
               grid, SIGNAL["tz"][0] * rng.uniform(0.9, 1.1), where=gland)
    adc[tz] = SIGNAL["tz"][1] * rng.uniform(0.9, 1.1)
    # Hyperplastic nodules give the central gland its heterogeneous look.
    nodules = ndimage.gaussian_filter(rng.standard_normal(grid.shape).astype(np.float32), (3 / sxy, 3 / sxy, 0.5))
    t2[tz] *= 1 + 0.5 * nodules[tz] / max(float(nodules[tz].std()), 1e-6) * 0.25
    label[gland] = ZONES["PZ"]
    label[tz] = ZONES["TZ"]
    put(Ellipsoid((pc[0], pc[1] + pr[1] * 0.15, pc[2]), (2.0, 2.0, pr[2]), rot), "urethra", tz)

    # Acquisition: partial volume, coil bias field, global gain, Rician noise.
    t2 = ndimage.gaussian_filter(t2, (0.7, 0.7, 0.3))
    adc = ndimage.gaussian_filter(adc, (1.6, 1.6, 0.3))  # DWI is acquired at lower resolution
    x, y, z = grid.coords((slice(0, nxy), slice(0, nxy), slice(0, nz)))
    bias = 1 + 0.25 * np.tanh((cy - b * 0.3 - y) / 120.0) + Wobble.random(rng, 0.15, 300.0)(x, y, z)
    gain = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    t2 = t2 * bias * gain
    sigma_t2 = 0.03 * SIGNAL["fat"][0] * gain * rng.uniform(0.7, 1.3)
    t2 = np.hypot(t2 + rng.normal(0, sigma_t2, t2.shape), rng.normal(0, sigma_t2, t2.shape))
    adc = np.clip(adc + rng.normal(0, 90, adc.shape) * (adc > 0), 0, None)
    image = np.stack([t2, adc], axis=-1)
    image = np.clip(np.rint(image), 0, 32767).astype(np.int16)
    params = {"spacing": grid.spacing, "shape": grid.shape, "gain": gain, "prostate_radii": pr, "tz_fraction": tz_frac}
    return PelvisPhantom(image=image, label=label, grid=grid, params=params)
