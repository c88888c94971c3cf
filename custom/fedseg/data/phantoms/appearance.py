"""From a phantom's tissue map to a CT image: HU per tissue and phase, texture, scanner effects.

Effects real scans carry and the phantoms reproduce: organ texture (smooth per-tissue variation,
mottled stool and food, lobulated pancreas), the arciform bands of the arterial spleen, partial
volume at every border (a point-spread function of random width), streaks radiating from dense
bone and the humeri with a dark beam-hardening band between arms held at the sides, cupping,
correlated reconstruction noise and, on some scanners, air outside the reconstruction circle.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fedseg.data.phantoms.body import TISSUES, Scene, T
from fedseg.data.phantoms.grid import Wobble
from fedseg.data.phantoms.organs import ORGANS
from fedseg.data.phantoms.phases import ARCIFORM_HU, TUMOUR_CONTRAST

# Amplitude ranges (HU) of the smooth texture added to each tissue.
TEXTURE_HU: dict[str, tuple[float, float]] = {
    "liver": (3, 8), "spleen": (3, 7), "muscle": (4, 10), "fat": (4, 10), "visceral_fat": (6, 18),
    "kidney_cortex": (4, 8), "kidney_medulla": (4, 8), "pancreas": (8, 18), "food": (20, 50), "stool": (40, 110),
    "bowel_wall": (5, 12), "lung": (20, 60), "cancellous_bone": (20, 60), "heart": (4, 10),
}


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox) -> np.ndarray:
    """Unit-variance Gaussian noise smoothed with ``sigma_vox``."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox, mode="nearest")
    return noise / max(float(noise.std()), 1e-6)


def _coarse_noise(rng: np.random.Generator, shape, sigma_vox) -> np.ndarray:
    """Like :func:`_smooth_noise` for wide kernels, drawn on a grid twice as coarse in plane (4x faster)."""
    coarse = tuple(max(2, (n + 1) // 2) for n in shape[:2]) + (shape[2],)
    noise = _smooth_noise(rng, coarse, (sigma_vox[0] / 2, sigma_vox[1] / 2, sigma_vox[2]))
    # Nearest-neighbour upsampling: the point-spread blur applied later smooths the 2x2 blocks.
    return noise.repeat(2, axis=0).repeat(2, axis=1)[: shape[0], : shape[1]]


def _arciform(rng: np.random.Generator, scene: Scene, image: np.ndarray, mean: float) -> None:
    """Alternating bands of high and low enhancement across the spleen (arterial phase)."""
    idx = np.nonzero(scene.organs == ORGANS["spleen"])
    if idx[0].size == 0:
        return
    grid = scene.grid
    x, y, z = (o + s * i.astype(np.float32) for o, s, i in zip(grid.origin, grid.spacing, idx))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    wavelength = rng.uniform(12, 25)
    warp = Wobble.random(rng, 1.0, 40.0)(x, y, z) * wavelength * 0.8
    phase = 2 * np.pi * ((x * direction[0] + y * direction[1] + z * direction[2]) + warp) / wavelength
    image[idx] = mean + rng.uniform(*ARCIFORM_HU) * np.tanh(2.5 * np.sin(phase + rng.uniform(0, 2 * np.pi)))


def _streak_field(rng: np.random.Generator, x, y, sources, bands, strength: float) -> np.ndarray:
    """Lines through dense objects (alternating bright and dark) and dark bands between pairs of them."""
    field = np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32)
    for sx, sy, amp in sources:
        dx, dy = x - sx, y - sy
        decay = np.exp(-np.sqrt(dx ** 2 + dy ** 2) / rng.uniform(80, 200))
        for _ in range(int(rng.integers(5, 12))):
            a = rng.uniform(0, np.pi)
            dist = np.abs(dx * np.sin(a) - dy * np.cos(a))
            field += rng.choice((-1.0, 1.0)) * amp * strength * rng.uniform(0.3, 1.0) * np.exp(
                -(dist / rng.uniform(0.7, 2.0)) ** 2) * decay
    for (x0, y0), (x1, y1), amp in bands:
        d = np.array([x1 - x0, y1 - y0])
        length = float(np.linalg.norm(d)) or 1.0
        t = np.clip(((x - x0) * d[0] + (y - y0) * d[1]) / length ** 2, 0, 1)
        dist = np.sqrt((x - x0 - t * d[0]) ** 2 + (y - y0 - t * d[1]) ** 2)
        field -= amp * strength * np.exp(-(dist / rng.uniform(8, 20)) ** 2)
    return field


def render(rng: np.random.Generator, scene: Scene, hu: dict[str, float], phase: str, *, noise_hu: float,
           spine: tuple[float, float], humeri: list[tuple[float, float]], fov_circle: bool) -> np.ndarray:
    """The phantom's CT image (float32 HU, not yet clipped) for per-tissue mean ``hu`` in ``phase``."""
    grid = scene.grid
    lut = np.array([hu[name] for name in TISSUES], np.float32)
    image = lut[scene.tissue]
    texture = _coarse_noise(rng, grid.shape, tuple(rng.uniform(1.5, 3.0) / s for s in grid.spacing))
    amp = np.zeros(len(TISSUES), np.float32)
    for name, (lo, hi) in TEXTURE_HU.items():
        amp[T[name]] = rng.uniform(lo, hi)
    image += amp[scene.tissue] * texture
    if phase == "arterial":
        _arciform(rng, scene, image, hu["spleen"])
    for mask, iso in scene.tumours:
        delta = rng.uniform(-16, -8) if iso else rng.uniform(*TUMOUR_CONTRAST.get(phase, TUMOUR_CONTRAST["portal-venous"]))
        image[mask] = hu["liver"] + delta + 0.5 * amp[T["liver"]] * texture[mask]

    # Partial volume: the scanner's point-spread function blurs every border.
    sigma = (rng.uniform(0.45, 0.9),) * 2 + (rng.uniform(0.25, 0.6),)
    image = ndimage.gaussian_filter(image, sigma, mode="nearest")

    body = scene.tissue != T["air"]
    x, y, _ = grid.coords((slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, 1)))
    x, y = x[..., 0], y[..., 0]
    r2 = ((x - spine[0]) ** 2 + (y - spine[1]) ** 2) / 200.0 ** 2
    image -= (rng.uniform(0, 6) * np.clip(1 - r2, 0, 1))[..., None] * body  # residual cupping (beam hardening)

    strength = rng.uniform(0.0, 1.0)
    sources = [(spine[0], spine[1], rng.uniform(3, 15))] + [(hx, hy, rng.uniform(10, 35)) for hx, hy in humeri]
    bands = [(humeri[0], humeri[1], rng.uniform(5, 25))] if len(humeri) == 2 else []
    chunk = max(1, int(round(rng.uniform(15, 40) / grid.spacing[2])))
    for k0 in range(0, grid.shape[2], chunk):
        field = _streak_field(rng, x, y, sources, bands, strength)
        image[..., k0:k0 + chunk] += field[..., None] * body[..., k0:k0 + chunk]

    image += noise_hu * _smooth_noise(rng, grid.shape, (rng.uniform(0.6, 1.0),) * 2 + (0.3,))
    if fov_circle:  # air outside the reconstruction circle
        cx = grid.origin[0] + grid.spacing[0] * (grid.shape[0] - 1) / 2
        cy = grid.origin[1] + grid.spacing[1] * (grid.shape[1] - 1) / 2
        radius = min(grid.shape[0] * grid.spacing[0], grid.shape[1] * grid.spacing[1]) / 2
        image[((x - cx) ** 2 + (y - cy) ** 2) > radius ** 2] = -1024.0
    return image
