"""``fedseg data import-dicom``: a folder tree of DICOM series into the MSD layout fedseg trains on.

Each image series that forms a volume becomes one case ``case_NNNN``: ``imagesTr/`` and
``labelsTr/`` when it has a label, ``imagesTs/`` (the ``test`` list of ``dataset.json``) when it
has none. Labels come from DICOM SEG objects that reference the series (in the source tree or the
labels folder) or from NIfTI/NRRD masks on the imported volume's grid. What the NIfTI files and
``dataset.json`` hold is anonymous; the mapping to patients, series and files goes to the
site-local manifest (:mod:`fedseg.data.local_manifest`) only.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fedseg.data.dicom_scan import Scan, Series, scan_folder
from fedseg.data.dicom_series import SeriesGeometry, check_geometry, read_slices, to_regular_grid
from fedseg.data.local_manifest import write_manifest
from fedseg.data.mask_files import is_mask_file, on_grid, read_mask
from fedseg.data.phantoms.nifti import save_nifti
from fedseg.data.problems import ProblemReport
from fedseg.data.seg import open_seg, referenced_series, segment_labels, seg_to_labels
from fedseg.errors import DataError
from fedseg.progress import Progress


@dataclass
class ImportResult:
    """What an import wrote; ``report`` names series folders and files (for the site's operator only)."""

    root: Path
    labelled: list[str] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    report: ProblemReport = field(default_factory=ProblemReport)
    manifest: Path | None = None

    def summary(self) -> str:
        refused = len({p.file for p in self.report.fatal})
        written = (f"{len(self.labelled)} labelled and {len(self.unlabelled)} unlabelled case(s) written to {self.root}"
                   if self.manifest else f"no importable series: nothing written to {self.root}")
        return f"{written}; {refused} series or label file(s) refused, {len(self.report.warnings)} warning(s)"


@dataclass
class _Label:
    source: str  # shown path of the SEG or mask file
    seg: object | None = None
    mask: np.ndarray | None = None


def _series_meta(series: Series) -> dict:
    ds = series.files[0].ds
    return {
        "patient_id": str(ds.get("PatientID", "")),
        "patient_name": str(ds.get("PatientName", "")),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "series_instance_uid": series.uid,
        "series_number": str(ds.get("SeriesNumber", "")),
        "series_description": str(ds.get("SeriesDescription", "")),
        "modality": str(ds.get("Modality", "")),
        "folder": series.shown,
    }


def _find_labels(scan: Scan, geometries: dict[str, SeriesGeometry], labels_dir: Path | None,
                 report: ProblemReport) -> dict[str, _Label]:
    """The one label of each series that has one; unmatched, ambiguous and conflicting labels reported."""
    found: dict[str, list[_Label]] = {uid: [] for uid in geometries}
    for item in scan.segs:
        try:
            seg = open_seg(item.path, item.shown)
            uid = referenced_series(seg, item.shown)
        except DataError as exc:
            report.add("bad_label_file", item.shown, str(exc).removeprefix(f"{item.shown}: "))
            continue
        if uid not in geometries:
            report.add("label_unmatched", item.shown, "SEG references a series that was not imported; not used",
                       fatal=False)
            continue
        found[uid].append(_Label(item.shown, seg=seg))
    masks = sorted(p for p in Path(labels_dir).rglob("*") if p.is_file() and is_mask_file(p)) if labels_dir else []
    for path in masks:
        shown = str(path)
        try:
            mask = read_mask(path, shown)
        except DataError as exc:
            report.add("bad_label_file", shown, str(exc).removeprefix(f"{shown}: "))
            continue
        hits = {uid: data for uid, g in geometries.items()
                if (data := on_grid(mask, g.shape, g.affine)) is not None}
        if not hits:
            report.add("label_unmatched", shown, f"mask {mask.data.shape} lies on the grid of no imported series; "
                                                 f"not used (masks are matched by grid, never resampled)", fatal=False)
        elif len(hits) > 1:
            report.add("label_ambiguous", shown, f"mask fits {len(hits)} series with the same grid; not used")
        else:
            uid, data = hits.popitem()
            found[uid].append(_Label(shown, mask=data))
    chosen = {}
    for uid, candidates in found.items():
        if len(candidates) > 1:
            report.add("label_conflict", geometries[uid].files[0].shown,
                       f"{len(candidates)} labels for one series ({', '.join(c.source for c in candidates)}); "
                       f"none used: keep one per series")
        elif candidates:
            chosen[uid] = candidates[0]
    return chosen


def _class_names(labels: dict[str, _Label], classes: tuple[str, ...] | None) -> tuple[str, ...]:
    if classes:
        return classes
    for label in labels.values():
        if label.seg is not None:
            return segment_labels(label.seg)
    top = max((int(label.mask.max()) for label in labels.values() if label.mask is not None), default=0)
    return ("foreground",) if top <= 1 else tuple(f"class_{v}" for v in range(1, top + 1))


def _label_volume(label: _Label, geometry: SeriesGeometry, classes: tuple[str, ...],
                  report: ProblemReport) -> np.ndarray | None:
    if label.mask is not None:
        data = label.mask
    else:
        try:
            data, ignored = seg_to_labels(label.seg, label.source, geometry, classes)
        except DataError as exc:
            report.add("bad_label_file", label.source, str(exc).removeprefix(f"{label.source}: "))
            return None
        if ignored:
            report.add("segments_ignored", label.source, f"segments {ignored} are not among the classes "
                                                         f"{list(classes)}; left out", fatal=False)
        data = to_regular_grid(data, geometry, label=True)
    if data.max(initial=0) > len(classes):
        values = sorted(int(v) for v in np.unique(data) if v > len(classes))
        report.add("bad_label_values", label.source, f"label values {values[:10]} beyond the {len(classes)} "
                                                     f"class(es) {list(classes)}; give --classes")
        return None
    return data


def import_dicom(src: Path, out: Path, *, labels: Path | None = None, classes: tuple[str, ...] | None = None,
                 modality: str | None = None, name: str = "dicom_import") -> ImportResult:
    """Import every DICOM image series under ``src`` into an MSD-layout dataset at ``out``.

    Args:
        labels: a folder of DICOM SEG files and/or NIfTI/NRRD masks (SEGs inside ``src`` are found too).
        classes: foreground class names in label-value order (default: the first SEG's segment
            labels, else ``foreground`` or ``class_N``).
        modality: import only series of this modality (default: the most common one).

    Raises:
        DataError: ``out`` already holds a dataset, or ``src`` is not a folder.
    """
    src, out = Path(src), Path(out)
    if (out / "dataset.json").exists():
        raise DataError(f"{out}: already holds a dataset (dataset.json); import into a new folder")
    if labels is not None and not Path(labels).is_dir():
        raise DataError(f"{labels}: labels folder not found")
    try:
        scan = scan_folder(src, (Path(labels),) if labels else ())
    except FileNotFoundError as exc:
        raise DataError(str(exc)) from None
    result = ImportResult(out, report=scan.report)
    report = result.report
    modalities = Counter(str(s.files[0].ds.get("Modality", "")) for s in scan.series)
    modality = modality or (modalities.most_common(1)[0][0] if modalities else "CT")
    geometries: dict[str, SeriesGeometry] = {}
    for series in scan.series:
        if str(series.files[0].ds.get("Modality", "")) != modality:
            report.add("other_modality", series.shown, f"{series.files[0].ds.get('Modality')} series; importing "
                                                       f"{modality} only (--modality)", fatal=False)
            continue
        geometry = check_geometry(series, report)
        if geometry is not None:
            geometries[series.uid] = geometry
    found = _find_labels(scan, geometries, labels, report)
    class_names = _class_names(found, classes)
    manifest_cases, entries, tests = {}, [], []
    by_uid = {s.uid: s for s in scan.series}
    progress = Progress("import DICOM series", len(geometries), unit="series")
    for uid, geometry in progress.track(geometries.items()):
        series = by_uid[uid]
        try:
            volume = to_regular_grid(read_slices(geometry), geometry)
        except ValueError as exc:
            report.add("undecodable_pixels", series.shown, str(exc))
            continue
        case = f"case_{len(manifest_cases):04d}"
        label = _label_volume(found[uid], geometry, class_names, report) if uid in found else None
        folder = "imagesTr" if label is not None else "imagesTs"
        save_nifti(out / folder / f"{case}.nii.gz", volume, geometry.affine)
        if label is not None:
            save_nifti(out / "labelsTr" / f"{case}.nii.gz", label.astype(np.uint8), geometry.affine)
            entries.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
            result.labelled.append(case)
        else:
            tests.append(f"./imagesTs/{case}.nii.gz")
            result.unlabelled.append(case)
        manifest_cases[case] = {
            **_series_meta(series),
            "files": [f.shown for f in geometry.files],
            "label_source": found[uid].source if uid in found else None,
            "resampled": list(geometry.resampled),
            "problems": [str(p) for p in report.problems if p.file == series.shown],
        }
    if not manifest_cases:
        return result  # nothing importable: leave no dataset.json that would block a corrected re-run
    _write_dataset_json(out, name, modality, class_names, entries, tests)
    result.manifest = write_manifest(out, {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": str(src.resolve()),
        "labels": str(Path(labels).resolve()) if labels else None,
        "cases": manifest_cases,
        "problems": [str(p) for p in report.problems],
    })
    return result


def _write_dataset_json(out: Path, name: str, modality: str, classes: tuple[str, ...],
                        training: list[dict[str, str]], test: list[str]) -> Path:
    """MSD ``dataset.json``: no identifier, no source path, only the anonymous case files."""
    body = {
        "name": name,
        "description": f"{len(training) + len(test)} {modality} series imported from DICOM by fedseg",
        "reference": "site data, imported with fedseg data import-dicom",
        "licence": "site-internal",
        "tensorImageSize": "3D",
        "modality": {"0": modality},
        "labels": {str(i): n for i, n in enumerate(("background", *classes))},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "dataset.json"
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path
