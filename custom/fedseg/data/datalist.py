"""Decathlon-style datalists: ``{"training": [...], "validation": [...], "test": [...]}``.

Every entry names files relative to the site's data root. Absolute paths, paths that climb out
of the root and (unless the site allows it) symlinks that lead out of it are refused: a datalist
must not be able to make a site read files elsewhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fedseg.data.files import stat_regular
from fedseg.data.msd import read_json
from fedseg.data.policy import SymlinkPolicy
from fedseg.data.problems import ProblemReport
from fedseg.errors import DataError

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


def _within(root: Path, path: Path) -> bool:
    return root == path or root in path.parents


def resolve_in_root(root: Path, ref: str, report: ProblemReport, where: str,
                    symlinks: SymlinkPolicy = "refuse") -> Path | None:
    """Resolve a datalist path inside ``root``; record a problem and return None if it is not allowed.

    The written path must stay in the root (no absolute paths, no ``..`` out of it); a symlink
    on the way that leads out of the root is refused, or with ``symlinks="warn"`` only reported.
    The file must exist and be a regular file (a directory, FIFO or socket is named as such).
    """
    if not isinstance(ref, str) or not ref.strip():
        report.add("bad_entry", where, f"expected a relative file path, got {ref!r}"[:300])
        return None
    if "\0" in ref:
        report.add("bad_entry", where, f"path {ref[:200]!r} holds a NUL character")
        return None
    pure = PurePosixPath(ref.replace("\\", "/"))
    if pure.is_absolute() or Path(ref).is_absolute():
        report.add("absolute_path", where,
                   f"path {ref!r} is absolute; datalists must use paths relative to the data root")
        return None
    root = Path(os.path.abspath(root))
    resolved = Path(os.path.normpath(root / pure))
    if not _within(root, resolved):
        report.add("path_escapes_root", where, f"path {ref!r} leaves the data root {root}")
        return None
    real = Path(os.path.realpath(resolved))
    if not _within(Path(os.path.realpath(root)), real):
        fatal = symlinks == "refuse"
        report.add("symlink_escapes_root", ref,
                   f"a symbolic link leads out of the data root {root} to {real} (listed in {where}); "
                   + ("refused: set symlinks_outside_root: warn in the site YAML to allow it" if fatal
                      else "allowed by the site YAML (symlinks_outside_root: warn)"), fatal=fatal)
        if fatal:
            return None
    try:
        stat_regular(resolved, "file")
    except DataError as exc:
        text = str(exc).removeprefix(f"{resolved}: ")
        kind = "not_a_file" if "not a regular file" in text else "missing_file"
        report.add(kind, ref, f"{text} (listed in {where})")
        return None
    return resolved


def _identity(path: Path) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _parse_entry(entry, where: str, root: Path, require_labels: bool, report: ProblemReport,
                 symlinks: SymlinkPolicy) -> Case | None:
    if not isinstance(entry, dict) or "image" not in entry:
        report.add("bad_entry", where, "entry must be an object with an 'image' path (and a 'label' path)")
        return None
    if require_labels and "label" not in entry:
        report.add("bad_entry", where, "entry has no 'label'")
        return None
    image = resolve_in_root(root, entry["image"], report, where, symlinks)
    label = resolve_in_root(root, entry["label"], report, where, symlinks) if "label" in entry else None
    if image is None or (label is None and require_labels):
        return None
    return Case(image, label, str(entry["image"]))


def parse_datalist(
    path: Path, root: Path, *, require_labels: bool = True, required_splits: tuple[str, ...] = ("training",),
    symlinks: SymlinkPolicy = "refuse",
) -> tuple[Datalist, ProblemReport]:
    """Read a datalist and resolve its entries, collecting every problem instead of stopping at the first.

    Each entry is checked on its own (an unforeseen error becomes an ``unexpected_error`` problem
    naming it). An image listed twice in a split is a ``duplicate_case``, an image in two splits
    is ``split_leakage``: both fatal, as both make the scores meaningless.

    Raises:
        DataError: the datalist file itself is missing, too large, too deep or not a JSON object.
    """
    report = ProblemReport()
    data = read_json(Path(path), "datalist")
    splits: dict[str, tuple[Case, ...]] = {}
    unknown = sorted(set(data) - set(SPLITS) - {"description", "name", "site", "seed", "dataset"})
    if unknown:
        report.add("unknown_split", path, f"unknown keys {unknown[:10]}; allowed splits are {', '.join(SPLITS)}")
    seen: dict[tuple[int, int], tuple[str, str]] = {}  # file identity -> (split, where)
    for split in SPLITS:
        entries = data.get(split, [])
        if not isinstance(entries, list):
            report.add("bad_entry", path, f"'{split}' must be a list of {{\"image\", \"label\"}} objects")
            continue
        if not entries and split in required_splits:
            hint = (" (a site without validation cases sets training_only: true in its YAML)"
                    if split == "validation" else "")
            report.add("empty_split", path, f"'{split}' lists no cases{hint}")
        cases = []
        for i, entry in enumerate(entries):
            where = f"{path} [{split}][{i}]"
            try:
                case = _parse_entry(entry, where, Path(root), require_labels, report, symlinks)
                if case is None:
                    continue
                first = seen.setdefault(_identity(case.image), (split, where))
                if first[1] != where:
                    kind = "duplicate_case" if first[0] == split else "split_leakage"
                    report.add(kind, case.ref, f"image listed again in {where}, already in {first[1]}"
                                               + ("" if first[0] == split else
                                                  f": the same case in {first[0]} and {split} inflates the scores"))
                    continue
                cases.append(case)
            except Exception as exc:  # one bad entry must not hide the others
                report.add("unexpected_error", where, f"entry could not be checked: {type(exc).__name__}: {exc}"[:400])
        splits[split] = tuple(cases)
    return Datalist(Path(path), Path(root), splits), report


def write_datalist(path: Path, splits: dict[str, list[dict[str, str]]], **extra) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**extra, **{s: splits.get(s, []) for s in SPLITS}}
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path
