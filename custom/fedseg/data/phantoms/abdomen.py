"""Synthetic abdominal CT phantoms in one of four contrast phases.

A phantom is drawn in two steps, as SynthSeg draws its training images from label maps: first
the anatomy, as a map of tissues and an organ label map (``body`` and ``organs``: outline, wall,
diaphragm with lung bases and heart, spine and ribs, arms, couch; spleen, liver, kidneys,
stomach, pancreas, colon, small bowel and vessels, shaped after real anatomy), then the
appearance (``appearance`` and ``phases``): every tissue's HU for the case's contrast phase
(ranges from the radiology literature, see ``phases``), texture, partial volume, streaks, noise.
Each case draws its own body size, organ sizes, shapes and positions, phase, enhancement
strength, voxel spacing, field of view (sometimes cutting the body), scan range, arm position,
couch and noise, so a model has to learn anatomy and context, not one calibrated look.

``PhantomOptions.randomise`` is the share of cases whose tissue HUs are instead drawn at random
(domain randomisation); see ``bench/README.md`` (sim-to-real) for what each choice measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from fedseg.data.phantoms import organs as org
from fedseg.data.phantoms.appearance import render
from fedseg.data.phantoms.body import Frame, Scene, draw_arms, draw_body, draw_couch, draw_ribs, draw_spine
from fedseg.data.phantoms.grid import Grid
from fedseg.data.phantoms.organs import ORGANS
from fedseg.data.phantoms.phases import DEFAULT_PHASE_MIX, PHASES, draw_phase, normalise_mix, phase_hu, randomised_hu

__all__ = ["ORGANS", "PHASES", "AbdomenPhantom", "PhantomOptions", "synth_abdomen"]


@dataclass(frozen=True)
class PhantomOptions:
    """Ranges the per-case parameters are drawn from; the defaults give demo-sized volumes."""

    inplane_spacing: tuple[float, float] = (1.3, 1.9)
    slice_thickness: tuple[float, ...] = (2.0, 2.5, 3.0, 4.0, 5.0)
    fov_mm: tuple[float, float] = (330.0, 470.0)  # square field of view; narrower than the body cuts it
    z_extent_mm: tuple[float, float] = (160.0, 280.0)
    noise_hu: tuple[float, float] = (9.0, 20.0)
    tumours: tuple[int, int] = (0, 0)  # inclusive range of liver tumours per case
    phase: str | None = None  # one phase for every case; None: drawn from phase_mix
    phase_mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_PHASE_MIX))
    randomise: float = 0.0  # share of cases whose tissue HUs are drawn at random (domain randomisation)
    arms_down: float = 0.35  # share of cases with the arms along the body (else raised, out of the scan)

    def __post_init__(self) -> None:
        if self.phase is not None and self.phase not in PHASES:
            raise ValueError(f"unknown phase {self.phase!r}; phases: {', '.join(PHASES)}")
        normalise_mix(self.phase_mix)
        for name in ("randomise", "arms_down"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"PhantomOptions.{name} is a share between 0 and 1, not {value}")


@dataclass
class AbdomenPhantom:
    """A phantom on an axis-aligned RAS grid: int16 HU image and uint8 organ map (see ORGANS)."""

    image: np.ndarray
    organs: np.ndarray
    grid: Grid
    params: dict = field(default_factory=dict)


def _frame(rng: np.random.Generator) -> Frame:
    a = rng.uniform(135, 185)
    b = rng.uniform(95, min(135, 0.88 * a))
    posterior = rng.uniform(0.82, 0.95)
    spine_r = rng.uniform(17, 22) * (a / 165.0 + b / 118.0) / 2
    z_dome = 0.0
    return Frame(cx=rng.uniform(-15, 15), cy=rng.uniform(-10, 10), a=a, b=b, posterior=posterior,
                 fat=rng.uniform(8, 38), wall=rng.uniform(8, 14), z_dome=z_dome,
                 z_dome_left=z_dome - rng.uniform(5, 20), spine_r=spine_r, spine_y=0.0)


def synth_abdomen(seed: int, options: PhantomOptions = PhantomOptions()) -> AbdomenPhantom:
    """Draw one abdominal CT phantom; the same seed (and options) always gives the same phantom."""
    rng = np.random.default_rng(seed)
    phase = options.phase or draw_phase(rng, options.phase_mix)
    frame = _frame(rng)
    back = frame.cy - frame.b * frame.posterior
    frame = Frame(**{**frame.__dict__, "spine_y": back + rng.uniform(50, 70) * frame.scale})

    sxy = float(rng.uniform(*options.inplane_spacing))
    sz = float(rng.choice(options.slice_thickness))
    nxy = int(round(rng.uniform(*options.fov_mm) / sxy))
    nz = int(round(rng.uniform(*options.z_extent_mm) / sz))
    fov = nxy * sxy
    # The scan starts between the lung bases (heart in view) and just below the domes.
    z_top = frame.z_dome + rng.uniform(-25, 60)
    origin = (-fov / 2 + rng.uniform(-15, 15), -fov / 2 - rng.uniform(0, 40), z_top - (nz - 1) * sz)
    grid = Grid((nxy, nxy, nz), (sxy, sxy, sz), origin)

    scene = Scene.empty(grid)
    regions = draw_body(rng, grid, frame, scene)
    draw_spine(rng, grid, frame, scene, regions)
    draw_ribs(rng, grid, frame, scene)
    vessels = org.great_vessels(rng, frame, scene, regions)
    org.kidneys(rng, frame, scene, regions, vessels)
    spleen = org.spleen(rng, frame, scene, regions)
    org.stomach(rng, frame, scene, regions)
    org.liver(rng, frame, scene, regions, vessels, options.tumours)
    org.pancreas(rng, frame, scene, regions, vessels, spleen)
    org.colon(rng, frame, scene, regions)
    org.small_bowel(rng, frame, scene, regions)
    arms_down = bool(rng.uniform() < options.arms_down)
    humeri = draw_arms(rng, grid, frame, scene) if arms_down else []
    draw_couch(rng, grid, frame, scene)

    randomised = bool(rng.uniform() < options.randomise)
    hu = randomised_hu(rng) if randomised else phase_hu(rng, phase)
    oral = bool(rng.uniform() < 0.2)  # positive oral contrast in stomach and bowel
    if oral and not randomised:
        hu["fluid"] = float(rng.uniform(150, 400))
    noise_hu = float(rng.uniform(*options.noise_hu))
    image = render(rng, scene, hu, phase, noise_hu=noise_hu, spine=(frame.cx, frame.spine_y), humeri=humeri,
                   fov_circle=bool(rng.uniform() < 0.5))
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    params = {"spacing": grid.spacing, "shape": grid.shape, "noise_hu": noise_hu, "tumours": len(scene.tumours),
              "phase": phase, "randomised": randomised, "oral_contrast": oral, "arms_down": arms_down,
              "hu_spleen": hu["spleen"], "hu_liver": hu["liver"], "hu_aorta": hu["artery"],
              "hu_kidney_cortex": hu["kidney_cortex"]}
    return AbdomenPhantom(image=image, organs=scene.organs, grid=grid, params=params)
