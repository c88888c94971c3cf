"""Site-local evaluation: per-case Dice and overlay pictures, computed where the images are.

A federated job sends the server per-class means and counts only. The spread of Dice over cases
and pictures of predicted masks over the scans are drawn here instead, by whoever holds the
images: ``fedseg train`` (its own data), ``fedseg simulate`` (the simulator's machine holds every
simulated site's data) and, at a real site, ``fedseg evaluate`` on a downloaded global model.
Per-case values are kept without case names or file names, in the order of the site's test list;
the overlay pictures name the site and the test case's position, never its file.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from fedseg.checkpoint import load_model
from fedseg.engine import DiceScores, Runtime, SegmentationEngine
from fedseg.site_data import SiteData
from fedseg.tasks.kinds import task_kind
from fedseg.tasks.spec import TaskSpec

log = logging.getLogger("fedseg")


def per_case_json(scores: DiceScores) -> dict[str, list[float | None]]:
    """Dice per class as one list over cases (``None`` where the case has no such class); no case names."""
    return {name: [None if v != v else round(float(v), 4) for v in (case[i] for case in scores.per_case)]
            for i, name in enumerate(scores.class_names)}


def score_cases(spec: TaskSpec, models: dict[str, Path], data: list[SiteData], runtime: Runtime,
                *, seed: int = 0) -> dict[str, dict[str, dict[str, list[float | None]]]]:
    """Per-case test Dice of each model file on each site: ``{model: {site: {class: [dice, ...]}}}``."""
    if not data:
        return {}
    engine = SegmentationEngine(spec, runtime, class_names=data[0].class_names, seed=seed)
    out: dict[str, dict[str, dict[str, list[float | None]]]] = {}
    for label, path in models.items():
        weights = load_model(path, spec)
        out[label] = {}
        for d in data:
            test = engine.eval_data(d.items("test"))
            scores = engine.evaluate(test, weights=weights, label=f"test {d.site.site} ({label}, per case)")
            out[label][d.site.site] = per_case_json(scores)
    return out


def display_window(spec: TaskSpec, image: np.ndarray) -> tuple[float, float]:
    """Grey-level range to show: the task's CT window, or the 1st-99th percentile for MR."""
    if spec.intensity.kind == "window":
        return float(spec.intensity.a_min), float(spec.intensity.a_max)
    finite = image[np.isfinite(image)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    return float(lo), float(max(hi, lo + 1e-6))


def _canonical(path_or_img, affine=None) -> tuple[np.ndarray, tuple[float, ...]]:
    img = nib.Nifti1Image(path_or_img, affine) if affine is not None else nib.load(str(path_or_img))
    ras = nib.as_closest_canonical(img)
    data = np.asarray(ras.dataobj)
    if data.ndim == 4:  # prostate: T2 and ADC; show T2
        data = data[..., 0]
    return data, tuple(float(z) for z in ras.header.get_zooms()[:3])


def write_overlays(spec: TaskSpec, model: Path, data: list[SiteData], out_dir: Path, runtime: Runtime, *,
                   model_label: str, max_cases: int = 3) -> list[Path]:
    """PNGs of axial, coronal and sagittal slices with reference and predicted masks over the scan.

    Up to ``max_cases`` test cases, taken in turn from each site. Interactive tasks are skipped
    (their masks come from clicks; see the Dice-vs-clicks plot).
    """
    if not task_kind(spec).volume_pictures or max_cases < 1:
        return []
    from fedseg.infer import Predictor
    from fedseg.plots import figure_overlay, save_figure

    queues = [[(d.site.site, k, c) for k, c in enumerate(d.datalist.cases("test"), start=1) if c.label is not None]
              for d in data]
    picked = []
    while len(picked) < max_cases and any(queues):
        for queue in queues:
            if queue and len(picked) < max_cases:
                picked.append(queue.pop(0))
    if not picked:
        return []
    predictor = Predictor(spec, model, runtime)
    names = data[0].class_names[1:]
    written = []
    safe_model = re.sub(r"[^0-9A-Za-z]+", "_", model_label).strip("_")  # "best (round 3)" -> best_round_3
    for site, k, case in picked:
        image, spacing = _canonical(case.image)
        reference, _ = _canonical(case.label)
        src = nib.load(str(case.image))
        predicted, _ = _canonical(predictor.mask(case.image, check=False), src.affine)
        title = f"{model_label} model, {site} test case {k}: reference vs predicted"
        fig = figure_overlay(image, reference.astype(np.int16), predicted.astype(np.int16), spacing,
                             display_window(spec, image), names, title)
        written.append(save_figure(fig, Path(out_dir) / f"overlay_{safe_model}_{site}_case{k}.png"))
    log.info("fedseg: wrote %d overlay picture(s) of the %s model to %s", len(written), model_label, out_dir)
    return written
