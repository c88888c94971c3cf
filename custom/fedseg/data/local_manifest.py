"""The site-local manifest: which anonymous case is which patient, study and series.

``fedseg data import-dicom`` names cases ``case_0000``, ``case_0001``, ... and writes the mapping
back to the patient and DICOM identifiers to ``<dataset>/.fedseg_local/manifest.json``. That file
never leaves the site: no fedseg metric, log line, datalist or message to the server reads it, and
tests check that its identifiers appear nowhere else. Anything that ships data off a site must
leave out ``LOCAL_DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

LOCAL_DIR = ".fedseg_local"
MANIFEST_RELPATH = PurePosixPath(LOCAL_DIR) / "manifest.json"

NOTICE = ("SITE-LOCAL, CONTAINS PATIENT IDENTIFIERS: maps the anonymous case ids of this dataset to patient, "
          "study and series identifiers and source files. Never copy it off the site; fedseg never reads it "
          "while training, evaluating or talking to the server.")


def manifest_path(dataset_root: Path) -> Path:
    """Where a dataset's site-local manifest lives."""
    return Path(dataset_root) / MANIFEST_RELPATH


def write_manifest(dataset_root: Path, body: dict) -> Path:
    """Write the manifest (owner-readable only) with the notice as its first key."""
    path = manifest_path(dataset_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    path.write_text(json.dumps({"notice": NOTICE, **body}, indent=2) + "\n")
    path.chmod(0o600)
    (path.parent / "README.txt").write_text(NOTICE + "\n")
    return path
