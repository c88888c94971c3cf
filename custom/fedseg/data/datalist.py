"""Decathlon-style datalists: ``{"training": [...], "validation": [...], "test": [...]}``.

Every entry names files relative to the site's data root. Absolute paths and paths that climb
out of the root are refused: a datalist must not be able to make a site read files elsewhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fedseg.data.msd import read_json
from fedseg.data.problems import ProblemReport

SPLITS = ("training", "validation", "test")
KEYS = ("image", "label")


@dataclass(frozen=True)
class Case:
    """One image (and label) resolved to absolute paths; ``ref`` is the path as the datalist gives it."""

    image: Path
    label: Path | None
    ref: str

    def as_item(self) -> dict[str, str]:
        item = {"image": str(self.image)}
        if self.label is not None:
            item["label"] = str(self.label)
        return item


@dataclass(frozen=True)
class Datalist:
    path: Path
    root: Path
    splits: dict[str, tuple[Case, ...]]

    def cases(self, split: str) -> tuple[Case, ...]:
        return self.splits.get(split, ())

    def items(self, split: str) -> list[dict[str, str]]:
        """Entries of one split as MONAI data dicts with absolute paths."""
        return [c.as_item() for c in self.cases(split)]

    def all_cases(self) -> list[tuple[str, Case]]:
        return [(split, c) for split in SPLITS for c in self.cases(split)]


def resolve_in_root(root: Path, ref: str, report: ProblemReport, where: str) -> Path | None:
    """Resolve a datalist path inside ``root``; record a problem and return None if it is not allowed."""
    if not isinstance(ref, str) or not ref.strip():
        report.add("bad_entry", where, f"expected a relative file path, got {ref!r}")
        return None
    pure = PurePosixPath(ref.replace("\\", "/"))
    if pure.is_absolute() or Path(ref).is_absolute():
        report.add("absolute_path", where, f"path {ref!r} is absolute; datalists must use paths relative to the data root")
        return None
    # Containment is checked on the written path, not on symlink targets: a site may well build its
    # data root from links into other storage, but a datalist must not climb out with "..".
    root = Path(os.path.abspath(root))
    resolved = Path(os.path.normpath(root / pure))
    if root != resolved and root not in resolved.parents:
        report.add("path_escapes_root", where, f"path {ref!r} leaves the data root {root}")
        return None
    if not resolved.is_file():
        report.add("missing_file", ref, f"file not found (listed in {where})")
        return None
    return resolved


def parse_datalist(
    path: Path, root: Path, *, require_labels: bool = True, required_splits: tuple[str, ...] = ("training",)
) -> tuple[Datalist, ProblemReport]:
    """Read a datalist and resolve its entries, collecting every problem instead of stopping at the first."""
    report = ProblemReport()
    data = read_json(Path(path), "datalist")
    splits: dict[str, tuple[Case, ...]] = {}
    unknown = sorted(set(data) - set(SPLITS) - {"description", "name", "site", "seed", "dataset"})
    if unknown:
        report.add("unknown_split", path, f"unknown keys {unknown}; allowed splits are {', '.join(SPLITS)}")
    for split in SPLITS:
        entries = data.get(split, [])
        if not isinstance(entries, list):
            report.add("bad_entry", path, f"'{split}' must be a list of {{\"image\", \"label\"}} objects")
            continue
        if not entries and split in required_splits:
            report.add("empty_split", path, f"'{split}' lists no cases")
        cases = []
        for i, entry in enumerate(entries):
            where = f"{path} [{split}][{i}]"
            if not isinstance(entry, dict) or "image" not in entry:
                report.add("bad_entry", where, "entry must be an object with an 'image' path (and a 'label' path)")
                continue
            if require_labels and "label" not in entry:
                report.add("bad_entry", where, "entry has no 'label'")
                continue
            image = resolve_in_root(root, entry["image"], report, where)
            label = resolve_in_root(root, entry["label"], report, where) if "label" in entry else None
            if image is not None and (label is not None or not require_labels):
                cases.append(Case(image, label, str(entry["image"])))
        splits[split] = tuple(cases)
    return Datalist(Path(path), Path(root), splits), report


def write_datalist(path: Path, splits: dict[str, list[dict[str, str]]], **extra) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**extra, **{s: splits.get(s, []) for s in SPLITS}}
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path
