"""``fedseg data synth``: write an MSD-layout dataset of synthetic phantoms for a task."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import numpy as np

from fedseg.data.msd import DatasetInfo, read_dataset_info, write_dataset_json
from fedseg.data.phantoms.abdomen import ORGANS, PhantomOptions, synth_abdomen
from fedseg.data.phantoms.nifti import save_nifti
from fedseg.data.phantoms.phases import (DEFAULT_PHASE_MIX, assign_phases, format_phase_mix, normalise_mix,
                                          parse_phase_mix)
from fedseg.data.phantoms.pelvis import synth_pelvis
from fedseg.progress import Progress
from fedseg.tasks import phantom_labels, task_names, task_phantom
from fedseg.tasks.parts import PhantomSpec

# Orientations real converters write: RAS (nibabel/ITK-SNAP), LPS (DICOM order), LAS (FSL radiological).
AXCODES = ("RAS", "LPS", "LAS")


@dataclass(frozen=True)
class SynthCase:
    """One phantom ready to write: RAS-indexed image (spatial axes first) and label."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    info: dict = field(default_factory=dict)  # what was drawn (phase, HU, ...), for phantoms.json


def _info(ph) -> dict:
    keys = ("phase", "randomised", "oral_contrast", "arms_down", "hu_spleen", "hu_liver", "hu_aorta", "tumours")
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in ph.params.items() if k in keys}


def make_case(phantom: PhantomSpec, seed: int, ct: PhantomOptions) -> SynthCase:
    """Draw one case of ``phantom``; ``ct`` holds the CT options the dataset chose for it (ignored for MR)."""
    if phantom.body == "pelvis":
        ph = synth_pelvis(seed)
        return SynthCase(ph.image, ph.label, ph.grid.affine)
    ph = synth_abdomen(seed, replace(ct, tumours=phantom.tumours))
    label = np.zeros(ph.organs.shape, dtype=np.uint8)
    for organ, value in phantom.organs:
        label[ph.organs == ORGANS[organ]] = value
    return SynthCase(ph.image, label, ph.grid.affine, _info(ph))


# Tasks that have phantoms (all of them today), derived from the task registry.
PHANTOMS: dict[str, PhantomSpec] = {name: task_phantom(name) for name in task_names()}
# Organs of the multi-organ (Deepgrow) phantoms, in label-value order.
ABDOMEN_ORGANS: tuple[str, ...] = phantom_labels("deepgrow2d")[1:]


def _write_case(task: str, out: Path, index: int, seed: int, ct: PhantomOptions) -> tuple[dict[str, str], dict]:
    case_seed = seed * 100_003 + index
    case = make_case(PHANTOMS[task], case_seed, ct)
    axcodes = AXCODES[np.random.default_rng(case_seed).integers(len(AXCODES))]
    name = f"{task}_{index}.nii.gz"
    save_nifti(out / "imagesTr" / name, case.image, case.affine, axcodes=axcodes, description="fedseg phantom")
    save_nifti(out / "labelsTr" / name, case.label, case.affine, axcodes=axcodes, description="fedseg phantom label")
    return {"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"}, case.info


def synthesize(task: str, out: Path, cases: int, seed: int = 0, workers: int = 1, *,
               phases: str | Mapping[str, float] | None = None, randomise: float | None = None) -> DatasetInfo:
    """Write ``cases`` phantoms for ``task`` into ``out`` in MSD layout; deterministic for a given seed.

    CT tasks: ``phases`` is the contrast-phase mix (``"portal-venous=0.7,arterial=0.1"`` or a
    mapping; default :data:`~fedseg.data.phantoms.phases.DEFAULT_PHASE_MIX`), dealt out to the cases
    in proportion (every phase with a share of at least one case is present); ``randomise`` is the
    share of cases whose tissue HUs are drawn at random (default: ``PhantomOptions``'s). What each case
    drew is written to ``phantoms.json`` next to ``dataset.json``.
    """
    if task not in PHANTOMS:
        raise ValueError(f"no phantom generator for task {task!r}; available: {', '.join(PHANTOMS)}")
    if cases < 1:
        raise ValueError(f"--cases must be at least 1, got {cases}")
    kind = PHANTOMS[task]
    ct_task = kind.modalities == ("CT",)
    if not ct_task and (phases is not None or randomise is not None):
        raise ValueError(f"task {task!r} has MR phantoms: contrast phases and CT randomisation do not apply")
    mix = normalise_mix(parse_phase_mix(phases) if isinstance(phases, str) else (phases or DEFAULT_PHASE_MIX))
    base = PhantomOptions(phase_mix=mix) if randomise is None else PhantomOptions(phase_mix=mix, randomise=randomise)
    per_case = assign_phases(cases, mix, seed) if ct_task else [None] * cases
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    args = [(task, out, i, seed, replace(base, phase=per_case[i])) for i in range(cases)]
    progress = Progress(f"synthesize {task} phantoms", cases, unit="case")
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            written = list(progress.track(pool.map(_write_case, *zip(*args))))
    else:
        written = list(progress.track(_write_case(*a) for a in args))
    training = [entry for entry, _ in written]
    tensor_size = "4D" if len(kind.modalities) > 1 else "3D"
    write_dataset_json(out, name=kind.dataset_name, description=kind.description, modalities=kind.modalities,
                       labels=phantom_labels(task), training=training, tensor_size=tensor_size)
    if ct_task:
        record = {"seed": seed, "phase_mix": format_phase_mix(mix), "randomise": base.randomise,
                  "cases": {entry["image"]: info for entry, info in written}}
        (out / "phantoms.json").write_text(json.dumps(record, indent=2) + "\n")
    return read_dataset_info(out)
