"""DICOM SEG objects (highdicom): a mask written as a SEG of its source series, and read back.

Frames are tied to source slices by SOP Instance UID (highdicom writes the per-frame source image
references and plane positions from the source datasets), so a viewer (3D Slicer, OHIF) lays
each frame on the slice it came from, whatever order the files have on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

import fedseg
from fedseg.data.dicom_series import SeriesGeometry
from fedseg.errors import DataError

_TUMOUR_WORDS = ("tumour", "tumor", "lesion", "neoplasm", "cancer")

# highdicom logs every copied module with the source's SOP Instance UID at INFO: identifiers have no
# place in fedseg's logs, which a site may share.
logging.getLogger("highdicom").setLevel(logging.WARNING)


def _property(name: str) -> tuple:
    """SNOMED category and type for a class name; unknown names are coded as generic tissue."""
    key = name.replace("_", " ").title().replace(" ", "")
    if any(w in name.lower() for w in _TUMOUR_WORDS):
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm
    organ = getattr(codes.SCT, key, None)
    if organ is not None:
        return codes.SCT.Organ, organ
    return codes.SCT.Tissue, codes.SCT.Tissue


def write_seg(mask: np.ndarray, geometry: SeriesGeometry, class_names: Sequence[str], out: Path, *,
              algorithm: str, series_number: int = 900) -> Path:
    """Write a class-index mask on the series' own slices as a binary DICOM SEG referencing the series.

    Args:
        mask: (columns, rows, slices) class indices, slices in ``geometry.files`` order.
        class_names: foreground class names; value i + 1 is ``class_names[i]``.
        algorithm: the model's name, recorded as the segmentation algorithm.
    """
    frames = np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(np.uint8)  # (slices, rows, columns)
    algo = hd.AlgorithmIdentificationSequence(name=algorithm, family=codes.cid7162.ArtificialIntelligence,
                                              version=fedseg.__version__)
    descriptions = []
    for number, name in enumerate(class_names, start=1):
        category, kind = _property(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo))
    seg = hd.seg.Segmentation(
        source_images=[f.ds for f in geometry.files],
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="fedseg",
        manufacturer_model_name=algorithm,
        software_versions=fedseg.__version__,
        device_serial_number="none",
        series_description=f"{algorithm} segmentation",
        # An all-background slice still gets its (empty) frame: every source slice is accounted for.
        omit_empty_frames=False,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    return out


def open_seg(path: Path, shown: str) -> hd.seg.Segmentation:
    """Read a DICOM SEG file; a file highdicom refuses is a :class:`DataError` naming it."""
    try:
        return hd.seg.segread(path)
    except Exception as exc:  # noqa: BLE001 - highdicom validates in many ways; report which file failed
        raise DataError(f"{shown}: not a readable DICOM SEG ({type(exc).__name__}: {exc})") from None


def segment_labels(seg: hd.seg.Segmentation) -> tuple[str, ...]:
    """The segment labels of a SEG, in segment-number order."""
    return tuple(str(seg.get_segment_description(n).segment_label) for n in seg.segment_numbers)


def referenced_series(seg: hd.seg.Segmentation, shown: str) -> str:
    """The SeriesInstanceUID a SEG was drawn on."""
    refs = seg.get("ReferencedSeriesSequence") or []
    if not refs:
        raise DataError(f"{shown}: SEG names no referenced series (ReferencedSeriesSequence)")
    return str(refs[0].SeriesInstanceUID)


def seg_to_labels(seg: hd.seg.Segmentation, shown: str, geometry: SeriesGeometry,
                  class_names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """A SEG's segments as a class-index map on the series' slices, (columns, rows, slices), uint8.

    Segments are matched to ``class_names`` by label (case-insensitive); segments with other labels
    are left out and returned as the second value.

    Raises:
        DataError: the SEG's frames do not lie on this series' slices.
    """
    wanted = {name.lower(): value for value, name in enumerate(class_names, start=1)}
    numbers, values, ignored = [], [], []
    for number, label in zip(seg.segment_numbers, segment_labels(seg)):
        if label.lower() in wanted:
            numbers.append(number)
            values.append(wanted[label.lower()])
        else:
            ignored.append(label)
    ds = geometry.files[0].ds
    if not numbers:
        return np.zeros((int(ds.Columns), int(ds.Rows), len(geometry.files)), np.uint8), ignored
    uids = [str(f.ds.SOPInstanceUID) for f in geometry.files]
    try:
        pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=numbers, combine_segments=True,
                                                   relabel=True, assert_missing_frames_are_empty=True)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{shown}: SEG frames do not lie on the slices of the series it references "
                        f"({type(exc).__name__}: {exc})") from None
    lut = np.asarray([0, *values], dtype=np.uint8)  # relabelled index i + 1 -> class value
    return lut[np.asarray(pixels)].transpose(2, 1, 0), ignored
