"""Writing phantom CT volumes as DICOM series, the way a PACS export stores them.

Used by the tests of ``fedseg data import-dicom`` and ``fedseg infer`` on DICOM input: one
single-frame CT Image Storage file per slice, LPS patient coordinates, stored values with a
rescale slope and intercept to HU, in any transfer syntax pydicom (or GDCM) can encode.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    generate_uid,
)

from fedseg.data.phantoms.nifti import reorient_from_ras

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _base_dataset(patient_name: str, patient_id: str, study_uid: str, series_uid: str, frame_uid: str,
                  series_number: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.Manufacturer = "fedseg phantom"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.StudyID = "1"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = series_number
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.KVP = 120
    return ds


def ct_series(
    image_ras: np.ndarray,
    affine_ras: np.ndarray,
    *,
    patient_name: str = "PHANTOM^ONE",
    patient_id: str = "PH0001",
    series_number: int = 1,
    signed: bool = False,
    study_uid: str | None = None,
    seed: int | None = None,
) -> list[Dataset]:
    """One CT Image dataset per axial slice of an RAS-indexed HU volume, uncompressed, in slice order.

    Args:
        image_ras: HU values, spatial axes first, indexed along R, A, S (as the phantoms are drawn).
        affine_ras: the volume's voxel-to-RAS affine (axis-aligned).
        signed: store signed HU with intercept 0; otherwise unsigned ``HU + 1024`` with intercept -1024.
        seed: derive the UIDs from this seed (reproducible files); random UIDs when None.

    Returns:
        The slices' datasets, inferior to superior; callers may change or drop some before writing.
    """
    data, affine = reorient_from_ras(np.asarray(image_ras), np.asarray(affine_ras, dtype=float), "LPS")
    lps = RAS_TO_LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]

    def uid(tag: str) -> str:
        return generate_uid(entropy_srcs=[str(seed), patient_id, str(series_number), tag]) if seed is not None \
            else generate_uid()

    study = study_uid or uid("study")
    series, frame = uid("series"), uid("frame")
    out = []
    for k in range(data.shape[2]):
        ds = _base_dataset(patient_name, patient_id, study, series, frame, series_number)
        ds.SOPInstanceUID = uid(f"slice{k}")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [round(float(v), 4) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [round(float(spacing[1]), 6), round(float(spacing[0]), 6)]  # between rows, columns
        ds.SliceThickness = round(float(spacing[2]), 4)
        plane = data[:, :, k].T  # DICOM rows run along the array's second axis
        if signed:
            ds.PixelRepresentation, ds.RescaleIntercept = 1, 0
            pixels = plane.astype(np.int16)
        else:
            ds.PixelRepresentation, ds.RescaleIntercept = 0, -1024
            pixels = np.clip(plane.astype(np.int32) + 1024, 0, 65535).astype(np.uint16)
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        out.append(ds)
    return out


def localizer(template: Dataset, *, rows: int = 64, columns: int = 96, seed: int = 0) -> Dataset:
    """A coronal scout image in the template's series (scanners often put the scout there)."""
    ds = _base_dataset(str(template.PatientName), str(template.PatientID), template.StudyInstanceUID,
                       template.SeriesInstanceUID, template.FrameOfReferenceUID, int(template.SeriesNumber))
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(seed), template.SeriesInstanceUID, "scout"])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.InstanceNumber = 1000
    ds.ImagePositionPatient = [-250.0, 0.0, 150.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    ds.PixelSpacing = [5.0, 5.0]
    ds.PixelRepresentation, ds.RescaleIntercept = 0, -1024
    ds.Rows, ds.Columns = rows, columns
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 2000, (rows, columns), dtype=np.uint16).tobytes()
    return ds


def write_series(datasets: Sequence[Dataset], folder: Path, transfer_syntax: str = ExplicitVRLittleEndian,
                 *, names: Sequence[str] | None = None) -> list[Path]:
    """Save datasets as DICOM Part 10 files in ``folder``, encoded in ``transfer_syntax``.

    pydicom encodes RLE, JPEG-LS and JPEG 2000; JPEG Lossless (process 14) goes through GDCM,
    the only encoder for it that installs from PyPI.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(names) if names is not None else [f"IM{i:05d}.dcm" for i in range(len(datasets))]
    paths = []
    for ds, name in zip(datasets, names):
        ds = copy.deepcopy(ds)  # compress() replaces Pixel Data in place; keep the caller's datasets
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / name
        uid = UID(transfer_syntax)
        if uid == JPEGLosslessSV1:
            ds.save_as(path, enforce_file_format=True)
            _gdcm_jpeg_lossless(path)
        else:
            if uid.is_compressed:
                ds.compress(uid, generate_instance_uid=False)  # the same image, losslessly stored
            else:
                ds.file_meta.TransferSyntaxUID = uid
            ds.save_as(path, enforce_file_format=True, little_endian=None, implicit_vr=None)
        paths.append(path)
    return paths


def _gdcm_jpeg_lossless(path: Path) -> None:
    import gdcm  # python-gdcm, part of the ``dicom`` extra

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise OSError(f"{path}: GDCM cannot read the file it is asked to transcode")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise OSError(f"{path}: GDCM cannot encode it as JPEG Lossless")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise OSError(f"{path}: GDCM cannot write it as JPEG Lossless")
