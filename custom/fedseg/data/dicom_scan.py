"""Finding image series in a folder tree of DICOM files.

Every file is read once, headers only (Pixel Data is deferred until a series is stacked), and
sorted into: slices of an image series (grouped by SeriesInstanceUID), DICOM SEG objects, and
files skipped with a reason (not DICOM, not an image, a localizer or scout, multi-frame, colour,
no patient geometry). Problems are recorded against the file's path relative to the scanned
folder; they are for the site's own operator and never leave the site.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import SegmentationStorage

from fedseg.data.problems import ProblemReport

# Values above this size stay on disk until used: Pixel Data of thousands of slices must not be
# read just to group them.
DEFER_BYTES = 1024
GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


@dataclass(frozen=True)
class DicomFile:
    """One DICOM file: its path, its path as reported (relative to the scanned root) and its headers."""

    path: Path
    shown: str
    ds: Dataset


@dataclass
class Series:
    """The single-frame image slices that share one SeriesInstanceUID."""

    uid: str
    files: list[DicomFile] = field(default_factory=list)

    @property
    def shown(self) -> str:
        """The series' folder relative to the scanned root (or the common part of its files' folders)."""
        parents = {str(Path(f.shown).parent) for f in self.files}
        folder = parents.pop() if len(parents) == 1 else _common_folder([f.shown for f in self.files])
        number = self.files[0].ds.get("SeriesNumber", "")
        return f"{folder} (series {number})" if number not in ("", None) else folder


def _common_folder(paths: list[str]) -> str:
    parts = [Path(p).parent.parts for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return str(Path(*common)) if common else "."


@dataclass
class Scan:
    """What a folder tree holds: image series, SEG objects, and everything skipped (in ``report``)."""

    series: list[Series]
    segs: list[DicomFile]
    report: ProblemReport


def read_headers(path: Path, shown: str, report: ProblemReport) -> Dataset | None:
    """Read a file's DICOM headers (Pixel Data deferred); record why a file is not DICOM."""
    try:
        return dcmread(path, defer_size=DEFER_BYTES)
    except InvalidDicomError:
        report.add("not_dicom", shown, "not a DICOM file (no DICM preamble); skipped", fatal=False)
    except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        report.add("unreadable_dicom", shown, f"cannot read DICOM headers ({type(exc).__name__}: {exc}); skipped",
                   fatal=False)
    return None


def _skip_reason(ds: Dataset) -> tuple[str, str] | None:
    """Why a readable DICOM file is not a slice of an image volume, or None if it is one."""
    sop = ds.get("SOPClassUID")
    sop_name = getattr(sop, "name", str(sop))
    if "PixelData" not in ds:
        return "non_image_object", f"{sop_name} holds no image; skipped"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return "localizer", "localizer/scout image; skipped"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multiframe_image", f"multi-frame {sop_name} is not supported (single-frame slices only); skipped"
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        return "not_grayscale", f"{sop_name} with {ds.SamplesPerPixel} samples per pixel (colour); skipped"
    missing = [k for k in GEOMETRY if k not in ds]
    if missing:
        return "no_geometry", f"{sop_name} without {', '.join(missing)} (no position in the patient); skipped"
    return None


def scan_folder(root: Path, extra_roots: tuple[Path, ...] = ()) -> Scan:
    """Group every DICOM file under ``root`` (and ``extra_roots``, e.g. a labels folder) into series.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: DICOM source folder not found")
    report = ProblemReport()
    groups: dict[str, Series] = defaultdict(lambda: Series(""))
    segs: list[DicomFile] = []
    seen: set[Path] = set()  # a labels folder inside the source tree is read once
    for base in (root, *extra_roots):
        for path in sorted(p for p in Path(base).rglob("*") if p.is_file() and not p.name.startswith(".")):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            shown = str(path.relative_to(base)) if base == root else str(path)
            if base != root and path.suffix.lower() in (".nii", ".gz", ".nrrd", ".nhdr"):
                continue  # mask files in the labels folder are read elsewhere
            ds = read_headers(path, shown, report)
            if ds is None:
                continue
            item = DicomFile(path, shown, ds)
            if ds.get("SOPClassUID") == SegmentationStorage:
                segs.append(item)
                continue
            reason = _skip_reason(ds)
            if reason:
                report.add(reason[0], shown, reason[1], fatal=False)
                continue
            uid = str(ds.get("SeriesInstanceUID", ""))
            if not uid:
                report.add("no_series_uid", shown, "image without SeriesInstanceUID; skipped", fatal=False)
                continue
            series = groups[uid]
            series.uid = uid
            series.files.append(item)
    return Scan(sorted(groups.values(), key=lambda s: s.files[0].shown), segs, report)
