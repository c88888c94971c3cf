"""Run folders: every run gets a folder of its own, and an existing one is never written over by accident.

Default names read ``<task>_<site or mode>_<backend>_<YYYYmmdd-HHMMSS>`` under ``runs/``; two runs
started in the same second get ``-2``, ``-3``... A folder the user names (``--out``, ``--run-dir``)
is used as given when it is missing or empty; one holding anything is refused unless
``--overwrite``, so a second run cannot silently replace the models and results of a first.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from fedseg.errors import FedsegError

RUNS_ROOT = Path("runs")


def new_run_dir(*parts: str, root: Path = RUNS_ROOT) -> Path:
    """Create and return a fresh ``root/<parts>_<timestamp>`` folder (a counter is added on a clash).

    The folder is created here (``mkdir`` without ``exist_ok``), so two runs started at once never
    share one.
    """
    base = "_".join([*(p for p in parts if p), time.strftime("%Y%m%d-%H%M%S")])
    Path(root).mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = Path(root) / (base if n == 1 else f"{base}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1


def claim_run_dir(path: Path, *, overwrite: bool, flag: str = "--out",
                  replaced: tuple[str, ...] = ()) -> Path:
    """Make ``path`` the run's folder: refused when it holds anything, unless ``overwrite``.

    With ``overwrite`` the files and folders matching ``replaced`` (glob patterns: what the run
    writes) are removed first, so nothing of the earlier run is left looking like part of the new
    one; everything else in the folder is kept.

    Raises:
        FedsegError: ``path`` is a file, or a non-empty folder and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FedsegError(f"{flag} {path}: is a file, not a folder")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise FedsegError(f"{flag} {path}: folder exists and is not empty (an earlier run?); name a new folder, "
                              f"leave {flag} out for a fresh one under {RUNS_ROOT}/, or add --overwrite")
        for pattern in replaced:
            for stale in path.glob(pattern):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (epochs, rounds, sites, cases, workers...)."""
    return _bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number of at least 0 (seeds, GPU counts, grace periods...)."""
    return _bounded_int(text, 0)


def _bounded_int(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number of at least 0 (e.g. GPUs per worker, which may be a fraction)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return value
