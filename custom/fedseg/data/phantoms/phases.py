"""Contrast phases of abdominal CT and the attenuation (HU) of every phantom tissue in each.

A phantom CT is drawn in one of four phases. Each enhancing tissue has a range of per-case mean HU
per phase; one case draws one "enhancement strength" that moves all its enhancing tissues together
(dose, timing and cardiac output vary between patients, organs of one scan follow them together),
plus a small independent jitter per tissue. The ranges come from (HU = unenhanced + enhancement):

* [U] Unenhanced values, standard radiology texts (e.g. *Radiology Secrets Plus*, normal CT of the
  liver, spleen and kidneys): liver 50-70 HU and about 10 HU above the spleen, kidneys 30-50 HU.
  The real non-contrast CT in ``tests/data/real`` measures lower (liver 45, spleen 33, kidneys
  11-15 HU with the renal sinus in the mask): the non-contrast ranges span both.
* [G] Bolus-tracking study of 171 patients, "MDCT of the liver and hypervascular hepatocellular
  carcinomas: optimizing scan delays for bolus-tracking techniques of hepatic arterial and portal
  venous phases" (AJR 2006): in the late arterial phase the aorta enhanced by 300-336 HU and the
  spleen by 97-108 HU while the liver enhanced by only 15-25 HU; in the portal-venous phase the liver
  peaked at +59-63 HU, the aorta had fallen to +117-125 HU and the spleen to +73-82 HU.
* [R] Hepatic arterial phase timing on 40-detector CT (Radiology 2007, PMID 17329690): aortic
  enhancement 235-309 HU (mean per protocol).
* [H] Herts et al., AJR 1995;164:327-331: hepatic enhancement 28-50 HU at 45-60 s with 30-40 g of
  iodine (lower doses give the lower portal-venous values).
* [P] Phase patterns (standard texts, as above): in the late arterial phase (25-35 s) the spleen
  enhances heterogeneously in alternating bands (arciform, "zebra") and the kidneys are in the
  corticomedullary phase (cortex bright, medulla dark); in the portal-venous phase (50-90 s) the
  spleen is homogeneous; nephrographic (80-120 s) and excretory (3-5 min and later) phases make the
  renal parenchyma homogeneous and then fill the collecting system with contrast.
* [A] The real arterial CT in ``../shared/data/real/contrast_ct_aorta``: aorta 353 +- 232 HU.

Equilibrium ("delayed", about 3 min) values follow the washout of [G]'s curves: vessels, liver and
spleen converge to about 90-130 HU.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

PHASES: tuple[str, ...] = ("non-contrast", "arterial", "portal-venous", "delayed")

# The Decathlon spleen and liver sets are portal-venous CT; the other phases are present at sites
# that scan multiphase protocols (and in any federated consortium), so they are kept in the mix.
DEFAULT_PHASE_MIX: dict[str, float] = {"portal-venous": 0.7, "arterial": 0.1, "delayed": 0.1, "non-contrast": 0.1}

# Per-case mean HU ranges of the tissues that enhance, per phase (sources in the module docstring).
ENHANCING: dict[str, dict[str, tuple[float, float]]] = {
    "non-contrast": {  # [U], and the real CT
        "liver": (42.0, 60.0), "spleen": (30.0, 45.0), "kidney_cortex": (25.0, 40.0),
        "kidney_medulla": (25.0, 38.0), "pancreas": (30.0, 45.0), "artery": (35.0, 50.0),
        "portal": (35.0, 50.0), "vein": (35.0, 50.0), "heart": (35.0, 50.0), "bowel_wall": (30.0, 45.0),
        "muscle": (40.0, 58.0), "urine": (0.0, 20.0),
    },
    "arterial": {  # [G] late arterial: aorta +300-336, spleen +97-108, liver +15-25; [R]; [A]; [P]
        "liver": (60.0, 90.0), "spleen": (105.0, 160.0), "kidney_cortex": (150.0, 260.0),
        "kidney_medulla": (60.0, 110.0), "pancreas": (90.0, 140.0), "artery": (250.0, 450.0),
        "portal": (110.0, 200.0), "vein": (60.0, 130.0), "heart": (200.0, 380.0), "bowel_wall": (70.0, 120.0),
        "muscle": (50.0, 65.0), "urine": (0.0, 20.0),
    },
    "portal-venous": {  # [G] liver +59-63, aorta +117-125, spleen +73-82; [H] lower doses; [P]
        "liver": (85.0, 130.0), "spleen": (95.0, 145.0), "kidney_cortex": (160.0, 230.0),
        "kidney_medulla": (120.0, 190.0), "pancreas": (80.0, 120.0), "artery": (140.0, 220.0),
        "portal": (150.0, 230.0), "vein": (120.0, 190.0), "heart": (130.0, 200.0), "bowel_wall": (70.0, 110.0),
        "muscle": (55.0, 70.0), "urine": (0.0, 20.0),
    },
    "delayed": {  # washout towards equilibrium; nephrographic kidneys, collecting system filling [P]
        "liver": (75.0, 105.0), "spleen": (75.0, 105.0), "kidney_cortex": (120.0, 190.0),
        "kidney_medulla": (120.0, 190.0), "pancreas": (60.0, 95.0), "artery": (90.0, 140.0),
        "portal": (95.0, 140.0), "vein": (90.0, 140.0), "heart": (90.0, 140.0), "bowel_wall": (55.0, 85.0),
        "muscle": (50.0, 65.0), "urine": (300.0, 900.0),
    },
}

# Tissues whose attenuation does not depend on the phase: per-case range.
FIXED: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0), "couch": (150.0, 400.0), "pad": (-950.0, -700.0), "fat": (-120.0, -85.0),
    "visceral_fat": (-110.0, -80.0), "renal_sinus": (-90.0, -40.0), "fluid": (0.0, 20.0), "bile": (0.0, 25.0),
    "food": (20.0, 70.0), "stool": (-60.0, 40.0), "gas": (-1000.0, -900.0), "lung": (-900.0, -780.0),
    "cortical_bone": (550.0, 1000.0), "cancellous_bone": (130.0, 300.0), "disc": (60.0, 110.0),
    "csf": (0.0, 20.0), "cartilage": (80.0, 220.0),
}

# Tumour attenuation relative to the liver, per phase: hypo-dense lesions as in the MSD liver set
# (metastases and HCC after washout); one in four nearly iso-dense (drawn by the caller).
TUMOUR_CONTRAST: dict[str, tuple[float, float]] = {
    "non-contrast": (-30.0, -10.0), "arterial": (-45.0, -15.0), "portal-venous": (-60.0, -30.0),
    "delayed": (-40.0, -15.0),
}
# Amplitude (HU, +-) of the arciform bands of the arterial spleen [P].
ARCIFORM_HU: tuple[float, float] = (25.0, 60.0)
# Share of delayed scans late enough to be excretory (contrast in the renal pelvis) [P].
EXCRETORY_SHARE = 0.5


def parse_phase_mix(text: str) -> dict[str, float]:
    """``"portal-venous=0.7,arterial=0.1"`` (or one phase name) -> weights summing to 1.

    Phases left out get weight 0; the weights given are normalised. Raises ValueError naming the
    offending item and the allowed phases.
    """
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError(f"empty phase mix; give e.g. portal-venous=0.7,arterial=0.1 (phases: {', '.join(PHASES)})")
    weights: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r} in {text!r}; phases: {', '.join(PHASES)}")
        if name in weights:
            raise ValueError(f"phase {name!r} given twice in {text!r}")
        try:
            weight = float(value) if value.strip() else 1.0
        except ValueError:
            raise ValueError(f"phase weight for {name!r} must be a number, not {value.strip()!r}") from None
        if not np.isfinite(weight) or weight < 0:
            raise ValueError(f"phase weight for {name!r} must be a finite number >= 0, not {value.strip()}")
        weights[name] = weight
    return normalise_mix(weights)


def normalise_mix(mix: Mapping[str, float]) -> dict[str, float]:
    """Weights of every phase (0 for those left out), summing to 1."""
    unknown = set(mix) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phase(s) {sorted(unknown)}; phases: {', '.join(PHASES)}")
    total = float(sum(mix.values()))
    if not total > 0:
        raise ValueError(f"phase weights {dict(mix)} sum to 0: at least one phase needs a positive weight")
    return {p: float(mix.get(p, 0.0)) / total for p in PHASES}


def format_phase_mix(mix: Mapping[str, float]) -> str:
    """The inverse of :func:`parse_phase_mix` (phases with weight 0 left out)."""
    return ",".join(f"{p}={w:.3g}" for p, w in normalise_mix(mix).items() if w > 0)


def assign_phases(cases: int, mix: Mapping[str, float], seed: int) -> list[str]:
    """One phase per case, in proportion to ``mix`` (largest remainders), in a seeded random order.

    Unlike independent draws, every phase with a positive weight that rounds to at least one case is
    present, so that even 20 cases hold the minority phases the mix asks for.
    """
    weights = normalise_mix(mix)
    exact = {p: w * cases for p, w in weights.items()}
    counts = {p: int(np.floor(v)) for p, v in exact.items()}
    for p in sorted(PHASES, key=lambda q: exact[q] - counts[q], reverse=True)[: cases - sum(counts.values())]:
        counts[p] += 1
    phases = [p for p in PHASES for _ in range(counts[p])]
    order = np.random.default_rng(np.random.SeedSequence([seed, 17])).permutation(cases)
    return [phases[i] for i in order]


def draw_phase(rng: np.random.Generator, mix: Mapping[str, float]) -> str:
    """One phase drawn from ``mix``."""
    weights = normalise_mix(mix)
    return str(rng.choice(PHASES, p=[weights[p] for p in PHASES]))


def phase_hu(rng: np.random.Generator, phase: str) -> dict[str, float]:
    """Per-case mean HU of every tissue in ``phase`` (see the module docstring for the sources)."""
    if phase not in ENHANCING:
        raise ValueError(f"unknown phase {phase!r}; phases: {', '.join(PHASES)}")
    strength = rng.uniform()  # one enhancement strength moves all enhancing tissues of the case together
    hu = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in FIXED.items()}
    for name, (lo, hi) in ENHANCING[phase].items():
        u = float(np.clip(strength + rng.normal(0.0, 0.2), 0.0, 1.0))
        hu[name] = lo + (hi - lo) * u
    if phase == "delayed" and rng.uniform() >= EXCRETORY_SHARE:
        hu["urine"] = float(rng.uniform(0.0, 20.0))
    # Scanner calibration shifts all soft tissue together, within the ranges' bounds.
    offset = float(np.clip(rng.normal(0.0, 3.0), -5.0, 5.0))
    for name in ("liver", "spleen", "kidney_cortex", "kidney_medulla", "pancreas", "muscle", "bowel_wall"):
        lo, hi = ENHANCING[phase][name]
        hu[name] = float(np.clip(hu[name] + offset, lo, hi))
    hu["fluid"] += offset
    if phase == "non-contrast":
        # Spleen below liver in the unenhanced scan [U]; the real CT: 12 HU below.
        hu["spleen"] = min(hu["spleen"], hu["liver"] - 6.0)
    return hu


def randomised_hu(rng: np.random.Generator) -> dict[str, float]:
    """Every tissue's HU drawn independently (domain randomisation, after SynthSeg).

    Soft tissues anywhere from below water to above the spleen window's top, so that no intensity
    order between organs holds; fat, gas, lung and bone stay in their physical ranges (a CT number
    scale is absolute, unlike MR signal), so that the window still separates them.
    """
    hu = phase_hu(rng, str(rng.choice(PHASES)))
    for name in (*ENHANCING["portal-venous"], "fluid", "bile", "food", "stool", "disc", "csf", "cartilage"):
        hu[name] = float(rng.uniform(-20.0, 260.0))
    hu["fat"] = float(rng.uniform(-160.0, -50.0))
    hu["visceral_fat"] = hu["fat"] + float(rng.uniform(-10.0, 30.0))
    hu["renal_sinus"] = float(rng.uniform(-120.0, 20.0))
    hu["cancellous_bone"] = float(rng.uniform(120.0, 450.0))
    hu["cortical_bone"] = float(rng.uniform(400.0, 1200.0))
    return hu
