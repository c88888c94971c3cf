"""Medical Segmentation Decathlon (MSD) dataset layout: ``dataset.json``, ``imagesTr/``, ``labelsTr/``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fedseg.data.files import read_json_bounded
from fedseg.data.problems import ProblemReport
from fedseg.errors import DataError


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset's own ``dataset.json`` says about itself."""

    root: Path
    name: str
    labels: tuple[str, ...]  # index = label value, 0 = background
    modalities: tuple[str, ...]
    num_training: int

    @property
    def foreground_labels(self) -> tuple[str, ...]:
        return self.labels[1:]


def read_json(path: Path, what: str) -> dict:
    """Read a JSON object within size and depth limits; a named :class:`DataError` otherwise."""
    return read_json_bounded(path, what)


def _indexed_names(data: dict, key: str) -> tuple[tuple[str, ...] | None, str | None]:
    """Names indexed 0..n-1 under ``key``, or None and what is wrong."""
    raw = data.get(key)
    if not isinstance(raw, dict) or not raw:
        return None, f"'{key}' must be an object mapping indices to names, e.g. {{\"0\": \"background\"}}"
    try:
        indexed = {int(k): v for k, v in raw.items()}
    except ValueError:
        return None, f"'{key}' keys must be integers, got {sorted(raw)[:10]}"
    if sorted(indexed) != list(range(len(indexed))):
        return None, f"'{key}' indices must run 0..{len(indexed) - 1} without gaps, got {sorted(indexed)[:10]}"
    bad = [f"{i}: {v!r}"[:60] for i, v in sorted(indexed.items()) if not isinstance(v, str) or not v.strip()]
    if bad:
        return None, f"'{key}' names must be non-empty strings, got {', '.join(bad[:5])}"
    return tuple(indexed[i] for i in range(len(indexed))), None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _field_problems(data: dict) -> list[str]:
    """Type problems of the optional ``dataset.json`` fields, one message per field or entry."""
    problems = []
    for key in ("name", "description", "tensorImageSize", "reference", "licence", "release"):
        if key in data and not isinstance(data[key], str):
            problems.append(f"'{key}' must be a string, got {type(data[key]).__name__}")
    for key in ("numTraining", "numTest"):
        if key in data and not _is_count(data[key]):
            problems.append(f"'{key}' must be a whole number >= 0, got {type(data[key]).__name__} {data[key]!r}"[:200])
    for key in ("training", "test"):
        entries = data.get(key, [])
        if not isinstance(entries, list):
            problems.append(f"'{key}' must be a list, got {type(entries).__name__}")
            continue
        needs = ("image", "label") if key == "training" else ("image",)
        for i, entry in enumerate(entries):
            if key == "test" and isinstance(entry, str):
                continue  # MSD lists test images as bare paths
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in needs):
                problems.append(f"'{key}'[{i}] must be an object with string {' and '.join(map(repr, needs))} paths")
    return problems


def inspect_dataset_info(root: Path, report: ProblemReport) -> DatasetInfo | None:
    """Read ``root/dataset.json``, adding one ``bad_dataset_json`` problem per bad field to ``report``.

    Returns the description when its labels and modalities are usable (other field problems are
    still reported, and fatal), else None.
    """
    path = Path(root) / "dataset.json"
    try:
        data = read_json(path, "dataset description (dataset.json)")
    except DataError as exc:
        report.add("bad_dataset_json", path, str(exc).removeprefix(f"{path}: "))
        return None
    for message in _field_problems(data):
        report.add("bad_dataset_json", path, message)
    names = {}
    for key in ("labels", "modality"):
        names[key], problem = _indexed_names(data, key)
        if problem:
            report.add("bad_dataset_json", path, problem)
    if names["labels"] is None or names["modality"] is None:
        return None
    training = data.get("training")
    count = data.get("numTraining")
    return DatasetInfo(
        root=Path(root),
        name=data["name"] if isinstance(data.get("name"), str) else Path(root).name,
        labels=names["labels"],
        modalities=names["modality"],
        num_training=count if _is_count(count) else len(training) if isinstance(training, list) else 0,
    )


def read_dataset_info(root: Path) -> DatasetInfo:
    """Read and check ``root/dataset.json``: label and modality names come from here, not from the task.

    Raises:
        DataError: listing every problem of the file.
    """
    report = ProblemReport()
    info = inspect_dataset_info(root, report)
    if info is None or report.problems:
        path = Path(root) / "dataset.json"
        raise DataError(f"{path}: " + "; ".join(p.message for p in report.problems))
    return info


def write_dataset_json(
    root: Path,
    *,
    name: str,
    description: str,
    modalities: tuple[str, ...],
    labels: tuple[str, ...],
    training: list[dict[str, str]],
    tensor_size: str = "3D",
) -> Path:
    """Write an MSD-style ``dataset.json`` (paths written as ``./imagesTr/...`` like MSD's own)."""
    body = {
        "name": name,
        "description": description,
        "reference": "fedseg synthetic phantoms",
        "licence": "CC-BY-SA 4.0",
        "tensorImageSize": tensor_size,
        "modality": {str(i): m for i, m in enumerate(modalities)},
        "labels": {str(i): n for i, n in enumerate(labels)},
        "numTraining": len(training),
        "numTest": 0,
        "training": [{k: f"./{v}" for k, v in item.items()} for item in training],
        "test": [],
    }
    path = Path(root) / "dataset.json"
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path
