"""2D Deepgrow samples from 3D multi-organ volumes, with MONAI's ``deepgrow.create_dataset``.

``create_dataset`` reorients each volume to RAS, resamples it to the task's pixel spacing (the
slice thickness follows the last entry) and writes one image per labelled slice and one binary
label per object on it. Here that is wrapped with what a site needs around it: the samples are
named by object (from the dataset's own ``dataset.json``), objects too small to click on are
dropped (and counted), and the result is cached so that every round reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedseg.errors import DataError
from fedseg.tasks.spec import TaskSpec

log = logging.getLogger("fedseg")
MANIFEST = "samples.json"


@dataclass(frozen=True)
class Prepared:
    """The 2D samples made from one list of 3D cases."""

    items: list[dict]
    dropped_small: int

    def per_object(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item["object"]] = counts.get(item["object"], 0) + 1
        return counts


def _fingerprint(spec: TaskSpec, cases: list[dict]) -> str:
    """Changes when the recipe or any source file changes, so a stale cache is never reused."""
    h = hashlib.sha256(json.dumps([spec.spacing, spec.interaction.min_area_mm2]).encode())
    for case in cases:
        for key in ("image", "label"):
            path = Path(case[key])
            stat = path.stat()
            h.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return h.hexdigest()


def prepare_slices(spec: TaskSpec, cases: list[dict], out_dir: Path, object_names: tuple[str, ...]) -> Prepared:
    """One sample per slice and labelled object of ``cases`` (dicts of absolute ``image``/``label`` paths).

    ``object_names`` are the dataset's label names indexed by value (0 = background). Each
    sample is ``{"image", "label", "object", "region", "case"}``: ``case`` is the position in
    ``cases``, never a file name, so that sample lists can be summarised without naming patients.
    """
    from monai.apps.deepgrow.dataset import create_dataset

    if spec.interaction is None:
        raise ValueError(f"task {spec.name!r} is not an interactive (Deepgrow) task")
    out_dir = Path(out_dir).resolve()
    if not cases:
        return Prepared([], 0)
    key = _fingerprint(spec, cases)
    manifest = out_dir / MANIFEST
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        if saved.get("fingerprint") == key:
            return Prepared(saved["items"], saved["dropped_small"])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    pixdim = tuple(spec.spacing) + (spec.spacing[-1],)  # slices as thick as a pixel is wide, as the card does
    raw = create_dataset([{"image": c["image"], "label": c["label"]} for c in cases], str(out_dir), dimension=2,
                         pixdim=pixdim)
    min_pixels = spec.interaction.min_area_mm2 / float(np.prod(spec.spacing))
    items, dropped = [], 0
    for sample in raw:
        region = int(sample["region"])
        if region >= len(object_names):
            raise DataError(f"label value {region} has no name in dataset.json (labels: {', '.join(object_names)})")
        if float(np.load(sample["label"]).sum()) < min_pixels:
            dropped += 1
            continue
        case = int(Path(sample["image"]).name.split("_")[2])  # vol_idx_NNNN_slice_...
        items.append({"image": sample["image"], "label": sample["label"], "region": region,
                      "object": object_names[region], "case": case})
    manifest.write_text(json.dumps({"fingerprint": key, "items": items, "dropped_small": dropped}))
    log.info("deepgrow: %d 2D samples from %d volumes (%d object slices under %.0f mm^2 dropped)",
             len(items), len(cases), dropped, spec.interaction.min_area_mm2)
    return Prepared(items, dropped)


def prepare_dataset(spec: TaskSpec, dataset_dir: Path, out_dir: Path) -> Prepared:
    """``fedseg data deepgrow-2d``: every training case of an MSD dataset, checked, then sliced.

    Writes ``out_dir/datalist.json`` (``{"training": [...]}``, paths relative to ``out_dir``) next to
    the samples; refuses the dataset, naming every bad file, if any case fails the checks.
    """
    from fedseg.data.checks import check_data

    from fedseg.data.msd import read_json

    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # dataset.json's own training list, alone, as a datalist (its other keys are not splits).
    source = out_dir / "source_datalist.json"
    training = read_json(dataset_dir / "dataset.json", "dataset description (dataset.json)").get("training", [])
    source.write_text(json.dumps({"training": training}))
    datalist, info, report = check_data(spec, dataset_dir, source, splits=("training",))
    report.raise_if_fatal(f"dataset {dataset_dir}")
    prepared = prepare_slices(spec, datalist.items("training"), out_dir / "samples", info.labels)
    rel = [dict(item, image=str(Path(item["image"]).relative_to(out_dir)),
                label=str(Path(item["label"]).relative_to(out_dir))) for item in prepared.items]
    (out_dir / "datalist.json").write_text(json.dumps({"labels": list(info.labels), "training": rel}, indent=1))
    return prepared
