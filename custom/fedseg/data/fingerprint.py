"""Has a site's data changed since it was checked? Cheap enough to ask before every round.

A federated site checks its files once, then trains for hours on volumes cached in memory. If
the files disappear, become unreadable or are replaced meanwhile (a PACS export re-run, a disk
unmounted), training on the cached copies would go on unnoticed. The fingerprint records each
file's size and modification time at check time; :func:`changes` compares them with the disk
and opens each file, naming every file that no longer matches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fedseg.data.datalist import Datalist
from fedseg.data.problems import ProblemReport


@dataclass(frozen=True)
class Fingerprint:
    """Size and modification time (ns) of every file a datalist names."""

    files: dict[Path, tuple[int, int]]


def _files(datalist: Datalist) -> list[Path]:
    return sorted({p for _, case in datalist.all_cases() for p in (case.image, case.label) if p is not None})


def take_fingerprint(datalist: Datalist) -> Fingerprint:
    """Stat every file the datalist names (files that cannot be stat'ed are left for :func:`changes`)."""
    files = {}
    for path in _files(datalist):
        try:
            st = os.stat(path)
        except OSError:
            continue
        files[path] = (st.st_size, st.st_mtime_ns)
    return Fingerprint(files)


def changes(fingerprint: Fingerprint) -> ProblemReport:
    """Problems (``missing_file``, ``unreadable_file``, ``changed_file``) of files that no longer match."""
    report = ProblemReport()
    for path, (size, mtime) in fingerprint.files.items():
        report.cases_checked += 1
        try:
            st = os.stat(path)
        except FileNotFoundError:
            report.add("missing_file", path, "was checked before training and has disappeared since")
            continue
        except OSError as exc:
            report.add("unreadable_file", path, f"cannot be read any more ({exc.strerror})")
            continue
        if (st.st_size, st.st_mtime_ns) != (size, mtime):
            report.add("changed_file", path, "was replaced or modified after it was checked; the cached copy "
                                             "training uses is stale (restart the site to check and use the new file)")
            continue
        try:
            with open(path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            report.add("unreadable_file", path, f"cannot be read any more ({exc.strerror})")
    return report
