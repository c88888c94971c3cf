"""Abdominal organs and vessels of a CT phantom, shaped after real anatomy.

* Spleen: a crescent in the left upper quadrant, its convex diaphragmatic surface pressed against
  the ribs (the ellipsoid it starts from reaches past the cavity wall and is clipped by it), its
  hilum a concave medial face where the splenic vessels enter; long axis along the 10th rib
  (posterior-superior to anterior-inferior); under the left hemidiaphragm.
* Liver: right lobe filling the right upper quadrant up to the dome, a left lobe of varying size
  reaching across the midline (in some patients as far as the spleen), caudate lobe by the IVC,
  portal and hepatic vein branches inside, gallbladder under the right lobe.
* Kidneys: bean shaped with a medial hilum, cortex, medulla and sinus fat, the right one lower.
* Stomach (fundus under the left dome, body and antrum in front), pancreas from head to a tail at
  the splenic hilum with the splenic vein behind it, colon from caecum to splenic flexure (high,
  lateral, next to the spleen's tip) and descending colon, small-bowel loops, mesenteric vessels.

Organ labels use :data:`ORGANS`; tissues (what sets the HU) use ``fedseg.data.phantoms.body.T``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fedseg.data.phantoms.body import Frame, Scene
from fedseg.data.phantoms.grid import Ellipsoid, Grid, Wobble, random_rotation, rotation_z, shape_mask, tube

# Organ codes of the multi-organ label map every phantom carries (codes 1-8 are fixed: tests,
# Deepgrow and DICOM SEG export refer to them).
ORGANS: dict[str, int] = {
    "spleen": 1,
    "liver": 2,
    "kidney_right": 3,
    "kidney_left": 4,
    "stomach": 5,
    "gallbladder": 6,
    "aorta": 7,
    "liver_tumour": 8,
    "pancreas": 9,
    "colon": 10,
}


# Spleen volume (mL). Normal adults: mean 215, range 107-315 (Prassopoulos et al., Eur Radiol 1997;
# 7:246-248, 140 patients); 198 +- 88 (Caglar et al., Folia Morphol 2014, 212 adults). The Decathlon
# spleen set holds patients under chemotherapy for liver metastases (Simpson et al. 2019,
# arXiv:1902.09063); under oxaliplatin-based chemotherapy the spleen grew in 86% of 136 patients, by
# 50% or more in 24% (Overman et al., J Clin Oncol 2010;28:2549-2555). The real CT in tests/data/real
# holds one of at least 255 mL (the scan cuts it at both ends). So a share of the cases is enlarged.
SPLEEN_NORMAL_ML = (215.0, 55.0, 107.0, 315.0)  # mean, sd, clipped to the normal range
SPLENOMEGALY_ML = (315.0, 750.0)
SPLENOMEGALY_SHARE = 0.4
# Share of the drawn ellipsoid's volume the spleen keeps after the hilum, the notches and the
# abdominal wall cut it (measured over phantoms; the scan range may cut it further).
_SPLEEN_KEPT = 0.28


def spleen_volume_ml(rng: np.random.Generator) -> float:
    """One case's target spleen volume (mL), from the ranges above."""
    if rng.uniform() < SPLENOMEGALY_SHARE:
        return float(rng.uniform(*SPLENOMEGALY_ML))
    mean, sd, lo, hi = SPLEEN_NORMAL_ML
    return float(np.clip(rng.normal(mean, sd), lo, hi))


def _frame_rotation(long_axis, normal) -> np.ndarray:
    """A rotation whose columns are ``long_axis``, their cross product and ``normal`` (orthonormalised)."""
    n = np.asarray(normal, np.float64)
    n /= np.linalg.norm(n)
    u = np.asarray(long_axis, np.float64)
    u = u - (u @ n) * n
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(n, u), n], axis=1).astype(np.float32)


def _bbox(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice] | None:
    """The index box holding every voxel of ``mask`` (plus ``margin``), or None if it is empty."""
    box = []
    for axis in range(3):
        hit = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        if hit.size == 0:
            return None
        box.append(slice(max(0, hit[0] - margin), hit[-1] + 1 + margin))
    return tuple(box)


def _erode(mask: np.ndarray, mm: float, grid: Grid) -> np.ndarray:
    """``mask`` eroded by about ``mm`` in plane (within its bounding box, for speed)."""
    iterations = max(1, int(round(mm / grid.spacing[0])))
    out = np.zeros_like(mask)
    box = _bbox(mask, margin=1)
    if box is None:
        return out
    structure = ndimage.generate_binary_structure(3, 1)
    structure[:, :, 0] = structure[:, :, 2] = False  # in-plane only: slices may be 5 mm thick
    out[box] = ndimage.binary_erosion(mask[box], structure, iterations=iterations)
    return out


def _vessels(rng: np.random.Generator, scene: Scene, points, radius, tissue: str, where: np.ndarray,
             jitter: float = 0.0) -> np.ndarray:
    pts = np.asarray(points, np.float32) + rng.normal(0, jitter, (len(points), 3)).astype(np.float32)
    return scene.put(tube(pts, radius, scene.grid), tissue, where=where)


def great_vessels(rng: np.random.Generator, f: Frame, scene: Scene, regions: dict) -> dict[str, tuple]:
    """Aorta and IVC in front of the spine; returns their axial centres."""
    grid = scene.grid
    z0, z1 = grid.origin[2] - 50, grid.origin[2] + grid.spacing[2] * grid.shape[2] + 50
    ra = rng.uniform(9, 13)
    aorta_c = (f.cx - rng.uniform(8, 18), f.spine_y + f.spine_r + ra + rng.uniform(1, 5))
    aorta = tube([(*aorta_c, z0), (*aorta_c, z1)], ra, grid)
    scene.put(aorta, "artery", ORGANS["aorta"], where=regions["cavity"])
    ivc_c = (f.cx + rng.uniform(18, 30), f.spine_y + f.spine_r + rng.uniform(6, 14))
    scene.put(tube([(*ivc_c, z0), (*ivc_c, z1)], rng.uniform(9, 13), grid), "vein", where=regions["cavity"] & ~aorta)
    return {"aorta": aorta_c, "ivc": ivc_c, "aorta_r": ra}


def kidneys(rng: np.random.Generator, f: Frame, scene: Scene, regions: dict, vessels: dict) -> dict[str, tuple]:
    """Both kidneys with cortex, medulla, sinus fat and pelvis, and their renal veins; returns the hila."""
    grid, hila = scene.grid, {}
    for name, side, drop in (("kidney_right", 1, rng.uniform(10, 25)), ("kidney_left", -1, 0.0)):
        ks = f.scale * rng.uniform(0.85, 1.15)
        kc = (f.cx + side * (f.spine_r + rng.uniform(40, 55) * f.scale), f.spine_y + rng.uniform(-5, 10),
              f.z_dome - rng.uniform(110, 135) - drop)
        rot = rotation_z(side * np.deg2rad(rng.uniform(20, 40))) @ random_rotation(rng, (12, 12, 5))
        outer = Ellipsoid(kc, (27 * ks, 23 * ks, 55 * ks), rot, Wobble.random(rng, 0.06, 60.0))
        medial = rot @ np.array([-side, 0.0, 0.0], np.float32)  # the hilum faces the spine
        hilum_c = tuple(np.asarray(kc) + medial * 26 * ks)
        kidney = shape_mask(outer, grid) & ~shape_mask(Ellipsoid(hilum_c, (12 * ks, 9 * ks, 22 * ks), rot), grid)
        kidney = scene.put(kidney, "kidney_cortex", ORGANS[name], where=regions["abdomen"] & scene.free())
        inner = _erode(kidney, rng.uniform(5, 8), grid)
        scene.put(inner, "kidney_medulla")
        sinus_c = tuple(np.asarray(kc) + medial * 12 * ks)
        scene.put(shape_mask(Ellipsoid(sinus_c, (11 * ks, 8 * ks, 30 * ks), rot), grid), "renal_sinus", where=kidney)
        scene.put(shape_mask(Ellipsoid(sinus_c, (6 * ks, 5 * ks, 14 * ks), rot), grid), "urine", where=kidney)
        hila[name] = hilum_c
        target = vessels["ivc"] if side > 0 else vessels["aorta"]
        _vessels(rng, scene, [hilum_c, (target[0], target[1] + 8, hilum_c[2] + 10)], rng.uniform(4, 6), "vein",
                 regions["abdomen"] & scene.free())
    return hila


def spleen(rng: np.random.Generator, f: Frame, scene: Scene, regions: dict) -> dict:
    """The spleen: a clipped, hollowed ellipsoid hugging the left posterolateral wall; returns its geometry."""
    grid = scene.grid
    # Proportions first, then the size that gives the volume drawn (splenic volume does not follow
    # body habitus: Prassopoulos 1997).
    target_ml = spleen_volume_ml(rng)
    phi = np.deg2rad(rng.uniform(185, 222))  # left (x < 0), mostly lateral, somewhat posterior
    half_l, half_w, half_t = rng.uniform(55, 70), rng.uniform(40, 55), rng.uniform(19, 26)
    drawn_ml = 4 / 3 * np.pi * half_l * half_w * half_t * 1.6 / 1000 * _SPLEEN_KEPT
    ss = float(np.cbrt(target_ml / drawn_ml))
    half_l, half_w, half_t = half_l * ss, half_w * ss, half_t * ss
    radial = np.array([np.cos(phi), np.sin(phi), 0.0])
    inward = -radial
    anterior_tangent = np.array([np.sin(phi), -np.cos(phi), 0.0])  # along the wall, towards the front
    tilt = np.deg2rad(rng.uniform(20, 45))
    long_axis = np.array([0.0, 0.0, 1.0]) * np.cos(tilt) - anterior_tangent * np.sin(tilt)
    rot = _frame_rotation(long_axis, inward)
    r_centre = f.wall_distance(phi) - half_t * rng.uniform(0.45, 0.85)
    z_c = f.z_dome_left - rng.uniform(10, 30) - half_l * 0.75
    centre = np.array([f.cx + r_centre * radial[0], f.cy + r_centre * radial[1], z_c])
    body = Ellipsoid(tuple(centre), (half_l, half_w, half_t * 1.6), rot, Wobble.random(rng, 0.15, 80.0))
    hilum_c = centre + inward * half_t * rng.uniform(1.2, 1.6)
    hilum = Ellipsoid(tuple(hilum_c), (half_l * 0.8, half_w * 0.6, half_t * 1.05), rot)
    mask = shape_mask(body, grid) & ~shape_mask(hilum, grid)
    for _ in range(int(rng.integers(0, 3))):  # notches of the anterior border
        c = centre + anterior_tangent * half_w * 0.9 + long_axis * rng.uniform(-0.5, 0.5) * half_l
        mask &= ~shape_mask(Ellipsoid(tuple(c), (8.0, 10.0, 6.0), rot), grid)
    mask = scene.put(mask, "spleen", ORGANS["spleen"], where=regions["abdomen"] & scene.free())
    hilum_point = centre + inward * half_t * 0.9
    for _ in range(int(rng.integers(2, 4))):  # hilar vessel branches entering the concave face
        end = hilum_point + long_axis * rng.uniform(-0.5, 0.5) * half_l
        start = end + inward * rng.uniform(15, 25)
        _vessels(rng, scene, [start, end], rng.uniform(2.5, 4.0), "portal", regions["abdomen"] & scene.free())
    return {"mask": mask, "hilum": hilum_point, "centre": centre, "half_l": half_l}


def stomach(rng: np.random.Generator, f: Frame, scene: Scene, regions: dict) -> np.ndarray:
    """Fundus under the left dome, body and antrum in front; wall, then gas (anterior), fluid or food."""
    grid, st = scene.grid, f.scale * rng.uniform(0.8, 1.2)
    ca, cb = f.ca, f.cb
    pts = np.array([
        (f.cx - 0.38 * ca, f.cy + 0.05 * cb, f.z_dome_left - 30),
        (f.cx - 0.32 * ca, f.cy + 0.35 * cb, f.z_dome - 75),
        (f.cx - 0.05 * ca, f.cy + 0.5 * cb, f.z_dome - 105),
        (f.cx + 0.15 * ca, f.cy + 0.35 * cb, f.z_dome - 110),
    ]) + rng.normal(0, 8, (4, 3))
    radii = np.array([40, 36, 28, 18]) * st * rng.uniform(0.8, 1.15, 4)
    mask = scene.put(tube(pts, radii, grid), "bowel_wall", ORGANS["stomach"], where=regions["abdomen"] & scene.free())
    lumen = _erode(mask, rng.uniform(3, 6), grid)
    content = "food" if rng.uniform() < 0.3 else "fluid"
    scene.put(lumen, content)
    y = grid.coords((slice(0, 1), slice(0, grid.shape[1]), slice(0, 1)))[1]
    level = f.cy + rng.uniform(0.25, 0.8) * cb  # supine: gas rises anteriorly
    if rng.uniform() < 0.7:
        scene.put(lumen & (y > level), "gas")
    return mask


def liver(rng: np.random.Generator, f: Frame, scene: Scene, regions: dict, vessels: dict, tumours: tuple[int, int]
          ) -> np.ndarray:
    """Right, left and caudate lobes, intrahepatic vessels, gallbladder and tumours."""
    grid, ls = scene.grid, f.scale * rng.uniform(0.85, 1.15)
    ca, cb = f.ca, f.cb
    wob = Wobble.random(rng, 0.2, 150.0)
    half_r = rng.uniform(75, 100) * ls
    right = Ellipsoid((f.cx + ca * rng.uniform(0.4, 0.55), f.cy + cb * rng.uniform(-0.05, 0.15), f.z_dome - half_r * 0.8),
                      (ca * rng.uniform(0.5, 0.68), cb * rng.uniform(0.75, 0.95), half_r),
                      rotation_z(0.0) @ random_rotation(rng, (5, 15, 10)), wob)
    left = Ellipsoid((f.cx - ca * rng.uniform(0.0, 0.35), f.cy + cb * rng.uniform(0.35, 0.55), f.z_dome - rng.uniform(30, 55)),
                     (ca * rng.uniform(0.35, 0.65), cb * rng.uniform(0.25, 0.4), rng.uniform(35, 55) * ls),
                     random_rotation(rng, (5, 5, 15)), wob)
    caudate = Ellipsoid((vessels["ivc"][0] - 10, vessels["ivc"][1] + 22, f.z_dome - 75), (22, 18, 35))
    shape = shape_mask(right, grid) | shape_mask(left, grid) | shape_mask(caudate, grid)
    where = regions["abdomen"] & scene.free()
    mask = scene.put(shape, "liver", ORGANS["liver"], where=where)

    # Portal vein from the hilum into both lobes, hepatic veins converging on the IVC at the top.
    porta = np.array([f.cx + 0.25 * ca, f.cy + 0.05 * cb, f.z_dome - 100 * ls])
    tips = [(f.cx + 0.65 * ca, f.cy - 0.1 * cb, f.z_dome - 70), (f.cx + 0.55 * ca, f.cy + 0.5 * cb, f.z_dome - 60),
            (f.cx - 0.1 * ca, f.cy + 0.45 * cb, f.z_dome - 50), (f.cx + 0.5 * ca, f.cy + 0.1 * cb, f.z_dome - 130)]
    for tip in tips:
        mid = (porta + np.asarray(tip)) / 2 + rng.normal(0, 10, 3)
        _vessels(rng, scene, [porta, mid, tip], [rng.uniform(5, 7), rng.uniform(3, 5), 2.0], "portal", mask)
    ivc_top = np.array([vessels["ivc"][0], vessels["ivc"][1], f.z_dome - 20])
    for tip in [(f.cx + 0.7 * ca, f.cy - 0.05 * cb, f.z_dome - 60), (f.cx + 0.35 * ca, f.cy + 0.55 * cb, f.z_dome - 55),
                (f.cx - 0.15 * ca, f.cy + 0.5 * cb, f.z_dome - 40)]:
        _vessels(rng, scene, [ivc_top, tip], [rng.uniform(5, 7), 2.0], "vein", mask, jitter=6.0)
    gb = Ellipsoid((f.cx + ca * 0.25, f.cy + cb * 0.3, f.z_dome - 115 * ls), (14, 13, 30), random_rotation(rng, (20, 20, 20)))
    scene.put(shape_mask(gb, grid), "bile", ORGANS["gallbladder"], where=regions["abdomen"] & (scene.free() | mask))
    mask &= scene.organs == ORGANS["liver"]
    _liver_tumours(rng, scene, mask, tumours)
    return mask


def _liver_tumours(rng: np.random.Generator, scene: Scene, liver_mask: np.ndarray, count_range) -> None:
    lo, hi = count_range
    count = int(rng.integers(lo, hi + 1)) if hi > 0 else 0
    inside = np.argwhere(_erode(liver_mask, 4.0, scene.grid)) if count else np.empty((0, 3))
    grid = scene.grid
    for _ in range(count):
        if len(inside) == 0:
            break
        i, j, k = inside[rng.integers(len(inside))]
        centre = tuple(float(o + s * v) for o, s, v in zip(grid.origin, grid.spacing, (i, j, k)))
        r = rng.uniform(8, 25)
        shape = Ellipsoid(centre, (r, r * rng.uniform(0.7, 1.0), r * rng.uniform(0.7, 1.2)),
                          random_rotation(rng, (30, 30, 30)), Wobble.random(rng, 0.15, 30.0))
        mask = shape_mask(shape, grid) & liver_mask
        if mask.any():
            scene.organs[mask] = ORGANS["liver_tumour"]
            scene.tumours.append((mask, bool(rng.uniform() >= 0.75)))


def pancreas(rng: np.random.Generator, f: Frame, scene: Scene, regions: dict, vessels: dict, spleen_geo: dict) -> None:
    """Pancreas from head to a tail at the splenic hilum, splenic vein behind it, portal vein to the liver."""
    ca, cb = f.ca, f.cb
    ya = vessels["aorta"][1] + vessels["aorta_r"]
    z = f.z_dome - rng.uniform(95, 120)
    hilum = spleen_geo["hilum"]
    pts = np.array([
        (f.cx + 0.28 * ca, ya + 25, z - 25), (f.cx + 0.05 * ca, ya + 22, z - 5), (f.cx - 0.2 * ca, ya + 18, z + 5),
        ((f.cx - 0.2 * ca + hilum[0]) / 2, (ya + 10 + hilum[1]) / 2, (z + 10 + hilum[2]) / 2),
        (hilum[0] + 10, hilum[1] + 10, hilum[2] - 10),
    ]) + rng.normal(0, 5, (5, 3))
    radii = np.array([16, 12, 11, 10, 9]) * rng.uniform(0.8, 1.2, 5) * f.scale
    where = regions["abdomen"] & scene.free()
    scene.put(tube(pts, radii, scene.grid), "pancreas", ORGANS["pancreas"], where=where)
    vein = pts[1:] - np.array([0, 12, 0])
    _vessels(rng, scene, vein, rng.uniform(4, 6), "portal", regions["abdomen"] & scene.free())
    porta = (f.cx + 0.25 * ca, f.cy + 0.05 * cb, f.z_dome - 100 * f.scale)
    _vessels(rng, scene, [vein[0], porta], rng.uniform(6, 8), "portal", regions["abdomen"] & scene.free())
    _vessels(rng, scene, [vein[0], vein[0] - np.array([0, -5, 90])], rng.uniform(4, 6), "portal",
             regions["abdomen"] & scene.free())
    artery = pts[2:] + np.array([0, 0, 12])
    _vessels(rng, scene, np.vstack([[vessels["aorta"][0], ya, z + 15], artery]), rng.uniform(2.5, 3.5), "artery",
             regions["abdomen"] & scene.free(), jitter=5.0)


def colon(rng: np.random.Generator, f: Frame, scene: Scene, regions: dict) -> None:
    """Caecum to descending colon, with the splenic flexure high and lateral, next to the spleen's tip."""
    ca, cb, zd = f.ca, f.cb, f.z_dome
    pts = np.array([
        (0.55 * ca, 0.1 * cb, -270), (0.65 * ca, -0.1 * cb, -200), (0.55 * ca, 0.15 * cb, -145),
        (0.15 * ca, 0.6 * cb, -rng.uniform(140, 190)), (-0.35 * ca, 0.55 * cb, -rng.uniform(110, 140)),
        (-0.72 * ca, 0.15 * cb, -rng.uniform(85, 120)), (-0.72 * ca, -0.15 * cb, -175), (-0.6 * ca, -0.05 * cb, -270),
    ]) + np.array([f.cx, f.cy, zd]) + rng.normal(0, 10, (8, 3))
    radii = rng.uniform(15, 26, len(pts)) * f.scale
    mask = scene.put(tube(pts, radii, scene.grid), "bowel_wall", ORGANS["colon"], where=regions["abdomen"] & scene.free())
    lumen = _erode(mask, rng.uniform(2, 4), scene.grid)
    scene.put(lumen, "stool")
    # Gas pockets in the stool, more of them where the colon lies anterior (non-dependent).
    box = _bbox(lumen)
    if box is None:
        return
    sub = lumen[box]
    noise = ndimage.gaussian_filter(rng.standard_normal(sub.shape).astype(np.float32), 1.5)
    y = scene.grid.coords(box)[1]
    threshold = rng.uniform(0.1, 0.35) - 0.15 * np.clip((y - f.cy) / cb, -1, 1)
    gas = np.zeros_like(lumen)
    gas[box] = sub & (noise > threshold * noise.std())
    scene.put(gas, "gas")


def small_bowel(rng: np.random.Generator, f: Frame, scene: Scene, regions: dict) -> None:
    """Loops filling what is left of the mid and lower abdomen; mesenteric vessels in the fat."""
    grid = scene.grid
    for _ in range(int(rng.integers(10, 20))):
        r = rng.uniform(10, 20)
        c = (f.cx + rng.uniform(-0.6, 0.6) * f.ca, f.cy + rng.uniform(-0.1, 0.75) * f.cb, f.z_dome - rng.uniform(110, 280))
        shape = Ellipsoid(c, (r, r * rng.uniform(0.6, 1.0), r * rng.uniform(1, 2.5)), random_rotation(rng, (40, 40, 90)))
        loop = scene.put(shape_mask(shape, grid), "bowel_wall", where=regions["abdomen"] & scene.free())
        inner = _erode(loop, rng.uniform(2, 3), grid)
        scene.put(inner, "gas" if rng.uniform() < 0.25 else "fluid")
    for _ in range(int(rng.integers(10, 25))):
        start = np.array([f.cx + rng.uniform(-0.2, 0.2) * f.ca, f.cy + rng.uniform(0.0, 0.3) * f.cb,
                          f.z_dome - rng.uniform(100, 200)])
        end = start + rng.normal(0, 50, 3)
        _vessels(rng, scene, [start, end], rng.uniform(1.5, 3.0), "portal" if rng.uniform() < 0.6 else "artery",
                 regions["abdomen"] & scene.free())
