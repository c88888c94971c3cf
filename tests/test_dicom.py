"""DICOM in (``fedseg data import-dicom``) and DICOM SEG out (``fedseg infer --out mask.dcm``).

Every DICOM file here is written by the test from a seeded phantom (fedseg.data.phantoms.dicom),
or is the real 3-slice GE CT in tests/data/real/dicom_ct_3slice/.
"""

from __future__ import annotations

import copy
import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from fedseg.cli import main
from fedseg.data.dicom_import import import_dicom
from fedseg.data.dicom_scan import scan_folder
from fedseg.data.dicom_series import check_geometry, read_slices, to_regular_grid, to_source_slices
from fedseg.data.local_manifest import LOCAL_DIR, MANIFEST_RELPATH, manifest_path
from fedseg.data.phantoms.abdomen import ORGANS, PhantomOptions, synth_abdomen
from fedseg.data.phantoms.dicom import ct_series, localizer, write_series
from fedseg.data.phantoms.nifti import reorient_from_ras, save_nifti
from fedseg.data.problems import ProblemReport
from fedseg.data.seg import open_seg, seg_to_labels, write_seg
from fedseg.data.split import split_dataset
from fedseg.site_config import write_site_config

REAL_DICOM = Path(__file__).resolve().parent / "data" / "real" / "dicom_ct_3slice"
SMALL = PhantomOptions(inplane_spacing=(5.5, 6.0), slice_thickness=(8.0,), fov_mm=(360.0, 380.0),
                       z_extent_mm=(180.0, 200.0))
# One series per transfer syntax; the first is stored signed, the others unsigned with intercept -1024.
SYNTAXES = (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless, JPEGLosslessSV1)


def _phantom(seed: int):
    ph = synth_abdomen(seed, SMALL)
    return ph.image, (ph.organs == ORGANS["spleen"]).astype(np.uint8), ph.grid.affine


def _patient(i: int) -> tuple[str, str]:
    return f"DOE^JANE{i}", f"PID{7000 + i}"


def _shuffled_names(n: int, patient_id: str, seed: int) -> list[str]:
    # File names carry the patient ID and are not in slice order, as PACS exports often are.
    order = np.random.default_rng(seed).permutation(n)
    return [f"{patient_id}_IMG{int(k):04d}.dcm" for k in order]


def _series_geometry(folder: Path):
    scan = scan_folder(folder)
    return check_geometry(scan.series[0], ProblemReport())


def _canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.dataobj), img.affine


@pytest.fixture(scope="module")
def phantom_tree(tmp_path_factory):
    """A PACS-like export: 5 phantom CT series in 5 transfer syntaxes (one with a scout in it), one
    series missing a slice, an SR object and a text file; labels as one SEG and RAS-ordered NIfTI masks."""
    root = tmp_path_factory.mktemp("dicom_src")
    src, labels = root / "export", root / "labels"
    expected, identifiers = {}, set()
    for i, syntax in enumerate(SYNTAXES):
        image, spleen, affine = _phantom(10 + i)
        name, pid = _patient(i)
        datasets = ct_series(image, affine, patient_name=name, patient_id=pid, series_number=3 + i,
                             signed=(i == 0), seed=i)
        folder = src / f"{pid}_{name.replace('^', '_')}" / f"series_{3 + i}"
        write_series(datasets, folder, syntax, names=_shuffled_names(len(datasets), pid, i))
        if syntax == JPEG2000Lossless:
            write_series([localizer(datasets[0])], folder, ExplicitVRLittleEndian, names=[f"{pid}_SCOUT.dcm"])
        if i == 1:
            write_seg(reorient_from_ras(spleen, affine, "LPS")[0], _series_geometry(folder), ["spleen"],
                      labels / "seg_1.dcm", algorithm="manual")
        else:
            save_nifti(labels / f"mask_{i}.nii.gz", spleen, affine)  # RAS order; the series is LPS
        expected[datasets[0].SeriesInstanceUID] = (image, spleen, affine)
        identifiers |= {name, pid, datasets[0].SeriesInstanceUID, datasets[0].StudyInstanceUID,
                        datasets[3].SOPInstanceUID, folder.parent.name, f"{pid}_IMG0003.dcm"}
    image, _, affine = _phantom(20)
    gappy = ct_series(image, affine, patient_name="ROE^RICHARD", patient_id="PID8000", seed=20)
    gap_folder = src / "PID8000" / "series_9"
    write_series(gappy[:10] + gappy[11:], gap_folder, RLELossless)
    sr = Dataset()
    sr.SOPClassUID, sr.SOPInstanceUID, sr.Modality = BasicTextSRStorage, generate_uid(), "SR"
    sr.PatientID, sr.SeriesInstanceUID = "PID8000", generate_uid()
    write_series([sr], gap_folder.parent / "report", names=["report.dcm"])
    (src / "README.txt").write_text("exported by a PACS\n")
    out = root / "dataset"
    result = import_dicom(src, out, labels=labels, classes=("spleen",))
    return src, out, result, expected, identifiers, gap_folder


def test_series_in_every_transfer_syntax_import_to_hu_on_the_scanner_grid(phantom_tree):
    _, out, result, expected, _, _ = phantom_tree
    assert result.labelled == [f"case_{i:04d}" for i in range(len(SYNTAXES))] and result.unlabelled == []
    manifest = json.loads(manifest_path(out).read_text())
    for case, entry in manifest["cases"].items():
        image, spleen, affine = expected[entry["series_instance_uid"]]
        got, got_affine = _canonical(out / "imagesTr" / f"{case}.nii.gz")
        assert got.dtype == np.int16 and np.array_equal(got, image), case  # lossless decode, slope/intercept in HU
        np.testing.assert_allclose(got_affine, affine, atol=1e-3)
        label, _ = _canonical(out / "labelsTr" / f"{case}.nii.gz")
        assert np.array_equal(label, spleen), f"{case} from {entry['label_source']}"
    assert sum(e["label_source"].endswith("seg_1.dcm") for e in manifest["cases"].values()) == 1


def test_scout_non_image_objects_and_a_missing_slice_are_reported(phantom_tree):
    src, _, result, _, _, gap_folder = phantom_tree
    by_kind = {}
    for p in result.report.problems:
        by_kind.setdefault(p.kind, []).append(p)
    assert [Path(p.file).name for p in by_kind["localizer"]] == ["PID7001_SCOUT.dcm"]
    assert [p.fatal for p in by_kind["localizer"]] == [False]
    assert [Path(p.file).name for p in by_kind["non_image_object"]] == ["report.dcm"]
    assert "Basic Text SR" in by_kind["non_image_object"][0].message
    assert [p.file for p in by_kind["not_dicom"]] == ["README.txt"]
    (missing,) = by_kind["missing_slices"]
    assert missing.fatal and missing.file.startswith(str(gap_folder.relative_to(src)))
    assert "16.00 mm between slices 10 and 11" in missing.message and "about 1 missing" in missing.message
    assert result.report.kinds() == {"localizer": 1, "missing_slices": 1, "non_image_object": 1, "not_dicom": 1}


def test_imported_dataset_passes_fedseg_data_check_unchanged(phantom_tree, tmp_path, capsys):
    _, out, _, _, _, _ = phantom_tree
    lists = split_dataset(out, 1, tmp_path / "splits", seed=0)
    site = write_site_config(tmp_path / "site-1.yaml", "site-1", {"spleen": (out, lists["site-1"])},
                             device="cpu", num_threads=1)
    assert main(["data", "check", "--task", "spleen", "--variant", "tiny", "--site-config", str(site)]) == 0
    assert "0 fatal problem(s), 0 warning(s) in 5 case(s)" in capsys.readouterr().out


def _exposed_bytes(dataset: Path) -> dict[str, bytes]:
    """What training can see of an imported dataset: file paths, JSON files, NIfTI headers and extensions."""
    seen = {}
    for path in sorted(dataset.rglob("*")):
        rel = path.relative_to(dataset)
        if rel.parts[0] == LOCAL_DIR or not path.is_file():
            continue
        seen[f"path {rel}"] = str(rel).encode()
        if path.name.endswith(".nii.gz"):
            raw = gzip.decompress(path.read_bytes())
            seen[str(rel)] = raw[: int(nib.load(str(path)).header["vox_offset"])]
        else:
            seen[str(rel)] = path.read_bytes()
    return seen


def _assert_no_identifier(dataset: Path, identifiers: set[str]) -> None:
    exposed = _exposed_bytes(dataset)
    assert any(k.startswith("dataset.json") for k in exposed) and any("imagesTr" in k for k in exposed)
    for ident in identifiers:
        leaks = [where for where, data in exposed.items() if ident.encode() in data]
        assert not leaks, f"{ident!r} found in {leaks}"


def test_identifiers_stay_in_the_site_local_manifest(phantom_tree):
    _, out, result, _, identifiers, _ = phantom_tree
    split_dataset(out, 1, out / "splits", seed=0)  # datalists live in the dataset folder too
    _assert_no_identifier(out, identifiers)
    assert result.manifest == out / MANIFEST_RELPATH
    manifest = json.loads(result.manifest.read_text())["cases"].values()
    kept = {v for entry in manifest for v in (entry["patient_id"], entry["patient_name"], entry["series_instance_uid"])}
    assert {"DOE^JANE0", "PID7004"} <= kept and len(kept) == 3 * len(SYNTAXES)  # the mapping is kept, at the site
    for case in ("imagesTr/case_0000.nii.gz", "labelsTr/case_0000.nii.gz"):
        header = nib.load(str(out / case)).header
        assert header["descrip"].item() == b"" and header["aux_file"].item() == b""


def test_real_ge_ct_matches_its_reference_conversion(tmp_path, capsys):
    src, labels = tmp_path / "src", tmp_path / "labels"
    src.mkdir(), labels.mkdir()
    for f in REAL_DICOM.glob("ct-3slice_*.dcm"):
        shutil.copy(f, src / f.name)
    shutil.copy(REAL_DICOM / "liver_seg.nrrd", labels / "liver_seg.nrrd")
    out = tmp_path / "dataset"
    rc = main(["data", "import-dicom", "--src", str(src), "--out", str(out), "--labels", str(labels),
               "--classes", "liver"])
    printed = capsys.readouterr().out
    assert rc == 0 and "1 labelled and 0 unlabelled case(s)" in printed
    for got, ref in (("imagesTr", "reference_ct.nii.gz"), ("labelsTr", "reference_liver_label.nii.gz")):
        a, b = nib.load(str(out / got / "case_0000.nii.gz")), nib.load(str(REAL_DICOM / ref))
        assert a.shape == b.shape == (512, 512, 3) and a.get_data_dtype() == b.get_data_dtype()
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), got
    manifest = json.loads((out / MANIFEST_RELPATH).read_text())["cases"]["case_0000"]
    assert manifest["files"] == ["ct-3slice_03.dcm", "ct-3slice_02.dcm", "ct-3slice_01.dcm"]  # by position
    series_uid = pydicom.dcmread(src / "ct-3slice_01.dcm").SeriesInstanceUID
    _assert_no_identifier(out, {"JANCT000", "99000", "ct-3slice", series_uid, "liver_seg"})


def test_geometry_rules_fatal_and_resampled(tmp_path):
    image, _, affine = _phantom(30)
    base = ct_series(image, affine, seed=30)

    def variant(change) -> ProblemReport:
        datasets = copy.deepcopy(base)
        change(datasets)
        folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        write_series(datasets, folder)
        report = ProblemReport()
        check_geometry(scan_folder(folder).series[0], report)
        return report

    def mixed(ds):
        ds[4].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]

    def duplicate(ds):
        ds[5].ImagePositionPatient = ds[4].ImagePositionPatient

    def irregular(ds):
        for d in ds[12:]:
            d.ImagePositionPatient = [*d.ImagePositionPatient[:2], d.ImagePositionPatient[2] + 1.0]

    fatal = {"mixed_orientation": mixed, "duplicate_positions": duplicate}
    for kind, change in fatal.items():
        report = variant(change)
        assert [(p.kind, p.fatal) for p in report.problems] == [(kind, True)]
    report = variant(irregular)
    assert [(p.kind, p.fatal) for p in report.problems] == [("irregular_spacing", False)]
    assert "varies from 8.000 to 9.000 mm; resampled to 8.000 mm" in report.problems[0].message


def test_gantry_tilt_is_resampled_onto_an_orthogonal_grid(tmp_path):
    """Slices acquired on a tilted gantry: each is shifted one row further; after resampling the
    volume is the untilted phantom again (below the rows the shift uncovers)."""
    image, _, affine = _phantom(31)
    datasets = ct_series(image, affine, seed=31)
    row_spacing = float(datasets[0].PixelSpacing[0])
    col_dir = np.asarray(datasets[0].ImageOrientationPatient[3:], dtype=float)
    for k, ds in enumerate(datasets):
        stored = np.frombuffer(ds.PixelData, np.uint16).reshape(ds.Rows, ds.Columns)
        ds.PixelData = np.ascontiguousarray(np.roll(stored, -k, axis=0)).tobytes()  # row r shows phantom row r + k
        ds.ImagePositionPatient = list(np.asarray(ds.ImagePositionPatient, float) + k * row_spacing * col_dir)
    write_series(datasets, tmp_path / "tilted", JPEG2000Lossless)
    scan = scan_folder(tmp_path / "tilted")
    report = ProblemReport()
    geometry = check_geometry(scan.series[0], report)
    assert [(p.kind, p.fatal) for p in report.problems] == [("gantry_tilt", False)]
    assert "resampled onto an orthogonal grid" in report.problems[0].message
    volume = to_regular_grid(read_slices(geometry), geometry)
    lps, _ = reorient_from_ras(image, affine, "LPS")
    n = volume.shape[2]
    assert np.array_equal(volume[:, n:, :], lps[:, n:, :])  # rows above n lay outside the tilted slices
    # A mask on the orthogonal grid goes back onto the tilted slices (as fedseg infer does for a SEG).
    spleen = (synth_abdomen(31, SMALL).organs == ORGANS["spleen"]).astype(np.uint8)
    mask = reorient_from_ras(spleen, affine, "LPS")[0]
    on_slices = to_source_slices(mask, geometry)
    tilted = np.stack([np.roll(mask[:, :, k], -k, axis=1) for k in range(n)], axis=-1)
    assert mask.sum() > 0 and np.array_equal(on_slices[:, : -n], tilted[:, : -n])


def test_undecodable_pixel_data_names_the_file(tmp_path, capsys):
    image, _, affine = _phantom(32)
    datasets = ct_series(image, affine, seed=32)
    paths = write_series(datasets, tmp_path / "src" / "s1")
    broken = pydicom.dcmread(paths[2])
    broken.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    broken.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not a jpeg \xff\xd9"])
    broken.save_as(paths[2])
    rc = main(["data", "import-dicom", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert rc == 1 and "no importable series: nothing written" in printed
    assert f"ERROR [undecodable_pixels] s1 (series 1): s1/{paths[2].name}: cannot decode pixel data (JPEG Baseline" \
        in printed and "Traceback" not in printed
    assert not (tmp_path / "out" / "dataset.json").exists()  # a corrected re-run may use the same folder


def test_seg_frames_land_on_their_source_slices(tmp_path):
    """A SEG written from a mask: every frame references the source slice at its own position and holds
    that slice's mask (checked with plain pydicom), and reading it back gives the mask on the source grid."""
    image, spleen, affine = _phantom(33)
    datasets = ct_series(image, affine, seed=33)
    write_series(datasets, tmp_path / "series", RLELossless, names=_shuffled_names(len(datasets), "P", 33))
    geometry = _series_geometry(tmp_path / "series")
    mask = reorient_from_ras(spleen, affine, "LPS")[0]
    write_seg(mask, geometry, ["spleen"], tmp_path / "seg.dcm", algorithm="test")

    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.SOPClassUID.name == "Segmentation Storage" and seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
    assert seg.SegmentSequence[0].SegmentLabel == "spleen" and int(seg.NumberOfFrames) == len(datasets)
    by_uid = {ds.SOPInstanceUID: k for k, ds in enumerate(datasets)}
    frames = seg.pixel_array
    for f, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = by_uid[source]
        assert [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
            [float(v) for v in datasets[k].ImagePositionPatient])
        assert np.array_equal(frames[f], mask[:, :, k].T), f"frame {f} / slice {k}"
    back, ignored = seg_to_labels(open_seg(tmp_path / "seg.dcm", "seg.dcm"), "seg.dcm", geometry, ["spleen"])
    assert ignored == [] and np.array_equal(back, mask)


@pytest.fixture(scope="module")
def untrained_spleen_model(tmp_path_factory) -> Path:
    from fedseg.checkpoint import save_model
    from fedseg.engine import Runtime, SegmentationEngine
    from fedseg.tasks import get_task

    spec = get_task("spleen", "tiny")
    torch.manual_seed(0)
    engine = SegmentationEngine(spec, Runtime.create("cpu", num_threads=2), seed=0)
    return save_model(tmp_path_factory.mktemp("model") / "spleen_tiny.pt", engine.get_weights(), spec)


def test_infer_on_a_dicom_series_writes_a_seg_on_the_source_slices(untrained_spleen_model, tmp_path, capsys):
    image, _, affine = _phantom(34)
    datasets = ct_series(image, affine, seed=34)
    write_series(datasets, tmp_path / "series", JPEG2000Lossless, names=_shuffled_names(len(datasets), "P", 34))
    args = ["infer", "--task", "spleen", "--model", str(untrained_spleen_model), "--device", "cpu", "--threads", "2"]
    assert main([*args, "--image", str(tmp_path / "series"), "--out", str(tmp_path / "out" / "mask.dcm")]) == 0
    assert f"{tmp_path / 'out' / 'mask.nii.gz'}, {tmp_path / 'out' / 'mask.dcm'}" in capsys.readouterr().out
    nifti = nib.load(str(tmp_path / "out" / "mask.nii.gz"))
    mask = np.asarray(nifti.dataobj)
    assert mask.shape == (image.shape[0], image.shape[1], len(datasets)) and 0 < mask.sum() < mask.size
    np.testing.assert_allclose(nib.as_closest_canonical(nifti).affine, affine, atol=1e-3)
    # Round trip: the SEG read back onto the series' slices (by SOP Instance UID) is the NIfTI mask.
    geometry = _series_geometry(tmp_path / "series")
    seg = open_seg(tmp_path / "out" / "mask.dcm", "mask.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == datasets[0].SeriesInstanceUID
    back, _ = seg_to_labels(seg, "mask.dcm", geometry, ["spleen"])
    assert np.array_equal(back, mask)
    # The NIfTI path is unchanged, and a SEG needs DICOM input.
    save_nifti(tmp_path / "ct.nii.gz", image, affine)
    assert main([*args, "--image", str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "m.dcm")]) == 2
    assert "a DICOM SEG, needs a DICOM series folder as --image" in capsys.readouterr().err


def test_infer_refuses_a_folder_with_several_series(untrained_spleen_model, tmp_path, capsys):
    for seed in (35, 36):
        image, _, affine = _phantom(seed)
        write_series(ct_series(image, affine, seed=seed, patient_id=f"P{seed}"), tmp_path / "study" / str(seed))
    rc = main(["infer", "--task", "spleen", "--model", str(untrained_spleen_model), "--device", "cpu",
               "--image", str(tmp_path / "study"), "--out", str(tmp_path / "mask.dcm")])
    err = capsys.readouterr().err
    assert rc == 2 and "2 usable image series (35 (series 1), 36 (series 1)); point --image at one series' folder" in err
