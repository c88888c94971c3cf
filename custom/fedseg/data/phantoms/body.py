"""The body of an abdominal CT phantom: outline, wall, diaphragm and lung bases, skeleton, arms, couch.

Everything is drawn as a *tissue map* (one code per voxel, see :data:`TISSUES`): appearance (HU per
phase, texture, scanner effects) is applied afterwards, so anatomy and appearance can vary
independently. Coordinates are RAS millimetres: +x is the patient's right, +y anterior, +z superior.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedseg.data.phantoms.grid import Ellipsoid, Grid, Wobble, shape_mask

TISSUES: tuple[str, ...] = (
    "air", "couch", "pad", "fat", "visceral_fat", "muscle", "cortical_bone", "cancellous_bone", "disc", "csf",
    "cartilage", "lung", "heart", "liver", "spleen", "kidney_cortex", "kidney_medulla", "renal_sinus", "urine",
    "pancreas", "artery", "portal", "vein", "bowel_wall", "fluid", "bile", "food", "stool", "gas",
)
T: dict[str, int] = {name: code for code, name in enumerate(TISSUES)}


@dataclass
class Scene:
    """A phantom under construction: tissue codes, organ labels and the liver tumours' masks."""

    grid: Grid
    tissue: np.ndarray
    organs: np.ndarray
    tumours: list[tuple[np.ndarray, bool]] = field(default_factory=list)  # (mask, nearly iso-dense)

    @staticmethod
    def empty(grid: Grid) -> "Scene":
        return Scene(grid, np.zeros(grid.shape, np.uint8), np.zeros(grid.shape, np.uint8))

    def put(self, mask: np.ndarray, tissue: str, organ: int | None = None, where: np.ndarray | None = None
            ) -> np.ndarray:
        """Set ``tissue`` (and the organ label, if given) inside ``mask`` & ``where``; return the voxels set."""
        if where is not None:
            mask = mask & where
        self.tissue[mask] = T[tissue]
        if organ is not None:
            self.organs[mask] = organ
        return mask

    def free(self) -> np.ndarray:
        """Voxels of the abdominal cavity no organ or vessel has taken yet."""
        return self.tissue == T["visceral_fat"]


@dataclass(frozen=True)
class Frame:
    """Where the body and its landmarks are (mm)."""

    cx: float
    cy: float
    a: float  # body half width
    b: float  # body half depth (anterior half; the back is flatter: b * posterior)
    posterior: float
    fat: float  # subcutaneous fat thickness
    wall: float  # abdominal wall muscle thickness
    z_dome: float  # top of the right hemidiaphragm
    z_dome_left: float
    spine_r: float  # vertebral body radius
    spine_y: float  # vertebral body centre (y)

    @property
    def ca(self) -> float:
        return self.a - self.fat - self.wall

    @property
    def cb(self) -> float:
        return self.b - self.fat - self.wall

    @property
    def scale(self) -> float:
        """Organ size factor from body habitus (1 for an average adult)."""
        return (self.a / 165.0 + self.b / 118.0) / 2

    def wall_distance(self, phi: float) -> float:
        """Distance (mm) from the body centre to the cavity's edge in the axial direction ``phi`` (radians)."""
        c, s = np.cos(phi), np.sin(phi)
        by = self.cb if s >= 0 else self.cb * self.posterior
        return float(1.0 / np.sqrt((c / self.ca) ** 2 + (s / by) ** 2))


def _outline(x, y, frame: Frame, shrink: float, wobble: Wobble) -> np.ndarray:
    """Level (< 1 inside) of the body outline shrunk by ``shrink`` mm, flatter at the back."""
    a, b = frame.a - shrink, frame.b - shrink
    by = np.where(y >= frame.cy, b, b * frame.posterior)
    return ((x - frame.cx) / a) ** 2 + ((y - frame.cy) / by) ** 2 + wobble(x, y, 0.0)


def draw_body(rng: np.random.Generator, grid: Grid, frame: Frame, scene: Scene) -> dict[str, np.ndarray]:
    """Skin and fat, wall muscle, cavity, diaphragm, lung bases and heart; returns the region masks."""
    x, y, z = grid.coords((slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, grid.shape[2])))
    wobble = Wobble.random(rng, 0.05, 260.0)
    # The abdomen widens below the ribs and narrows again towards the pelvis: a slow z profile.
    taper = (1.0 + 0.04 * np.sin((z - frame.z_dome) / rng.uniform(120, 200) + rng.uniform(0, 6))).astype(np.float32)
    levels = [_outline(x, y, frame, shrink, wobble).astype(np.float32) for shrink in (0.0, frame.fat, frame.fat + frame.wall)]
    body, wall, cavity = (lv / taper ** 2 < 1.0 for lv in levels)
    scene.put(body, "fat")
    scene.put(wall, "muscle")
    scene.put(cavity, "visceral_fat")

    # Diaphragm: two domes (the left lower), deepest in the posterior recesses; lung above it.
    ca, cb = frame.ca, frame.cb
    z_d = np.full((grid.shape[0], grid.shape[1]), -1e9, np.float32)
    for side, top in ((1, frame.z_dome), (-1, frame.z_dome_left)):
        xs = frame.cx + side * 0.42 * ca
        dome = (top - 50.0 * ((x[..., 0] - xs) / (0.6 * ca)) ** 2 - 30.0 * ((y[..., 0] - frame.cy - 0.1 * cb) / cb) ** 2
                - 35.0 * np.clip((frame.cy - y[..., 0]) / cb, 0, 1) ** 2)
        z_d = np.maximum(z_d, dome)
    dia_t = rng.uniform(3.0, 6.0)
    above = z > z_d[..., None]
    thorax = cavity & above
    # Under the ribs the diaphragm also lines the wall: organs keep dia_t from it there.
    lined = _outline(x, y, frame, frame.fat + frame.wall + dia_t, wobble) / taper ** 2 < 1.0
    lined |= z < frame.z_dome - 150.0
    below = cavity & lined & (z < z_d[..., None] - dia_t)
    scene.put(cavity & ~above & ~below, "muscle")
    scene.put(thorax, "lung")
    heart_c = (frame.cx - 0.15 * ca, frame.cy + 0.25 * cb, frame.z_dome - rng.uniform(15, 30) + 55.0)
    heart = shape_mask(Ellipsoid(heart_c, (0.42 * ca, 0.5 * cb, 65.0), None, Wobble.random(rng, 0.08, 120.0)), grid)
    fat_pad = shape_mask(Ellipsoid(heart_c, (0.42 * ca + 8, 0.5 * cb + 8, 73.0)), grid)
    scene.put(fat_pad, "visceral_fat", where=thorax)
    scene.put(heart, "muscle", where=thorax)
    inner = shape_mask(Ellipsoid(heart_c, (0.42 * ca - 9, 0.5 * cb - 9, 56.0)), grid)
    scene.put(inner, "heart", where=thorax)
    return {"body": body, "cavity": cavity, "abdomen": below, "thorax": thorax, "z_diaphragm": z_d}


def draw_spine(rng: np.random.Generator, grid: Grid, frame: Frame, scene: Scene, regions: dict) -> None:
    """Vertebral bodies with discs, canal and posterior elements; paraspinal and psoas muscles."""
    cx, yv, rv = frame.cx, frame.spine_y, frame.spine_r
    long_z, zc = 10_000.0, float(np.mean(grid.coords((slice(0, 1), slice(0, 1), slice(0, grid.shape[2])))[2]))
    for side in (-1, 1):
        scene.put(shape_mask(Ellipsoid((cx + side * 36, yv - rv - 24, zc), (24, 22, long_z)), grid), "muscle",
                  where=regions["body"])
        psoas_r = rng.uniform(13, 21) * frame.scale
        psoas = Ellipsoid((cx + side * (rv + psoas_r * 0.7), yv + 4, frame.z_dome - 330), (psoas_r, psoas_r * 0.9, 200.0))
        scene.put(shape_mask(psoas, grid), "muscle", where=regions["abdomen"])
    scene.put(shape_mask(Ellipsoid((cx, yv, zc), (rv, rv * 0.9, long_z)), grid), "cortical_bone")
    scene.put(shape_mask(Ellipsoid((cx, yv, zc), (rv - 2.5, rv * 0.9 - 2.5, long_z)), grid), "cancellous_bone")
    pitch = rng.uniform(30, 36)
    z_top = grid.origin[2] + grid.shape[2] * grid.spacing[2]
    for zd in np.arange(frame.z_dome + rng.uniform(0, pitch), grid.origin[2] - pitch, -pitch):
        if zd < z_top + pitch:
            scene.put(shape_mask(Ellipsoid((cx, yv, zd), (rv - 1, rv * 0.9 - 1, rng.uniform(3.0, 5.0))), grid), "disc")
    scene.put(shape_mask(Ellipsoid((cx, yv - rv - 12, zc), (22, 13, long_z)), grid), "cortical_bone")
    scene.put(shape_mask(Ellipsoid((cx, yv - rv - 9, zc), (8, 7, long_z)), grid), "csf")


def draw_ribs(rng: np.random.Generator, grid: Grid, frame: Frame, scene: Scene) -> None:
    """Ribs in the wall, sloping down from the spine to the costal cartilages in front.

    In an axial slice each rib shows where its slope crosses the slice: several short bony arcs
    around the upper abdomen, more posteriorly than anteriorly at low levels (floating ribs).
    """
    x, y, _ = grid.coords((slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, 1)))
    x, y = np.broadcast_arrays(x[..., 0], y[..., 0])
    ra, rb = frame.ca + frame.wall * 0.6, frame.cb + frame.wall * 0.6
    by = np.where(y >= frame.cy, rb, rb * frame.posterior)
    radial = np.sqrt(((x - frame.cx) / ra) ** 2 + ((y - frame.cy) / by) ** 2)
    half_t = rng.uniform(2.5, 3.5)
    band = np.abs(radial - 1.0) * min(ra, rb) < half_t
    ii, jj = np.nonzero(band)
    if ii.size == 0:
        return
    theta = np.arctan2(y[ii, jj] - frame.cy, x[ii, jj] - frame.cx)
    alpha = np.abs(np.angle(np.exp(1j * (theta + np.pi / 2)))) / np.pi  # 0 at the spine, 1 in front
    zs = grid.origin[2] + grid.spacing[2] * np.arange(grid.shape[2])
    pitch, drop = rng.uniform(22, 30), rng.uniform(110, 170)
    z12 = frame.z_dome - rng.uniform(115, 145)  # the 12th rib's head
    height = rng.uniform(3.5, 5.0)
    for k in range(12):  # from the 12th rib upwards
        z0 = z12 + k * pitch + rng.uniform(-4, 4)
        if z0 - drop > zs[-1] + 20:
            break
        reach = min(0.95, 0.35 + 0.2 * k) + rng.uniform(-0.05, 0.05)  # floating ribs are short
        zk = z0 - drop * rng.uniform(0.85, 1.15) * alpha ** rng.uniform(1.0, 1.5)
        hit = np.abs(zs[None, :] - zk[:, None]) < height
        bone = hit & (alpha[:, None] < reach) & (alpha[:, None] > 0.08)
        cartilage = hit & (alpha[:, None] >= reach) & (alpha[:, None] < 0.93) & (k >= 2)
        for mask, name in ((bone, "cortical_bone"), (cartilage, "cartilage")):
            p, kz = np.nonzero(mask)
            scene.tissue[ii[p], jj[p], kz] = T[name]


def draw_arms(rng: np.random.Generator, grid: Grid, frame: Frame, scene: Scene) -> list[tuple[float, float]]:
    """Arms along the body (when not raised above the head); returns the humeri's axial centres."""
    centres = []
    long_z = 10_000.0
    zc = grid.origin[2] + grid.spacing[2] * grid.shape[2] / 2
    ra, rb = rng.uniform(38, 55), rng.uniform(42, 60)
    gap, dy = rng.uniform(3, 30), rng.uniform(-0.2, 0.2) * frame.b
    for side in (-1, 1):
        c = (frame.cx + side * (frame.a + gap + ra), frame.cy + dy)
        scene.put(shape_mask(Ellipsoid((*c, zc), (ra, rb, long_z)), grid), "fat")
        scene.put(shape_mask(Ellipsoid((*c, zc), (ra - 8, rb - 8, long_z)), grid), "muscle")
        hx, hy = c[0] + side * rng.uniform(-5, 10), c[1] + rng.uniform(-10, 10)
        scene.put(shape_mask(Ellipsoid((hx, hy, zc), (11, 11, long_z)), grid), "cortical_bone")
        scene.put(shape_mask(Ellipsoid((hx, hy, zc), (7, 7, long_z)), grid), "cancellous_bone")
        centres.append((hx, hy))
    return centres


def draw_couch(rng: np.random.Generator, grid: Grid, frame: Frame, scene: Scene) -> None:
    """The table: a curved shell under the back (on a foam pad or not) and a flat plate below it."""
    x, y, _ = grid.coords((slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, 1)))
    back = frame.cy - frame.b * frame.posterior
    top = back - rng.uniform(0, 12)
    radius = rng.uniform(350, 700)
    half_w = rng.uniform(200, 260)
    d = np.sqrt((x - frame.cx) ** 2 + (y - top - radius) ** 2)
    width = np.abs(x - frame.cx) < half_w
    shell = (d >= radius) & (d < radius + rng.uniform(2.0, 5.0)) & width
    air = scene.tissue == T["air"]
    if rng.uniform() < 0.6:  # a foam mattress between back and shell
        scene.tissue[(d < radius) & (y < back + 40) & width & air] = T["pad"]
    scene.tissue[shell & air] = T["couch"]
    plate_y = top - rng.uniform(20, 60)
    plate = (np.abs(y - plate_y) < rng.uniform(1.5, 3.5)) & (np.abs(x - frame.cx) < half_w * 0.9)
    scene.tissue[plate & (scene.tissue == T["air"])] = T["couch"]

