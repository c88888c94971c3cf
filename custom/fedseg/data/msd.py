"""Medical Segmentation Decathlon (MSD) dataset layout: ``dataset.json``, ``imagesTr/``, ``labelsTr/``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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
    """Read a JSON object, refusing a missing, unreadable or non-object file with a named error."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: {what} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: {what} must be a JSON object, found {type(data).__name__}")
    return data


def _indexed_names(path: Path, data: dict, key: str) -> tuple[str, ...]:
    raw = data.get(key)
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: '{key}' must be an object mapping indices to names, e.g. {{\"0\": \"background\"}}")
    try:
        indexed = {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        raise DataError(f"{path}: '{key}' keys must be integers, got {sorted(raw)}") from None
    if sorted(indexed) != list(range(len(indexed))):
        raise DataError(f"{path}: '{key}' indices must run 0..{len(indexed) - 1} without gaps, got {sorted(indexed)}")
    return tuple(indexed[i] for i in range(len(indexed)))


def read_dataset_info(root: Path) -> DatasetInfo:
    """Read and check ``root/dataset.json``: label and modality names come from here, not from the task."""
    path = Path(root) / "dataset.json"
    data = read_json(path, "dataset description (dataset.json)")
    labels = _indexed_names(path, data, "labels")
    modalities = _indexed_names(path, data, "modality")
    training = data.get("training", [])
    return DatasetInfo(
        root=Path(root),
        name=str(data.get("name", Path(root).name)),
        labels=labels,
        modalities=modalities,
        num_training=int(data.get("numTraining", len(training) if isinstance(training, list) else 0)),
    )


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
