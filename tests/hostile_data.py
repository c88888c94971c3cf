"""Bad input as a hospital's export scripts might produce it: real files, written broken on purpose.

``Broken`` makes a private, hard-linked copy of a phantom dataset; each ``break_*`` function
breaks one thing in it and returns what the data check must report: the file it must name, the
kind, how many problems of that kind, and whether they are fatal. Used by the preflight tests
and by ``bench``-style measurements of the check.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from conftest import make_site


def _link(source: Path, target: Path) -> None:
    """A hard link (a symlink out of the root would be refused), or a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class Broken:
    """A hard-linked copy of a dataset whose first training case can be broken in place."""

    def __init__(self, source: Path, tmp: Path, task: str, *, keep: int | None = None):
        """``keep``: list only that many cases per split (the check then reads fewer files)."""
        self.root, self.tmp, self.task, self.source = tmp / "data", tmp, task, source
        for path in source.rglob("*"):
            target = self.root / path.relative_to(source)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif path.suffix == ".json":
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                _link(path, target)
        self.datalist = self.root / "splits" / "site-1.json"
        self.lists = json.loads(self.datalist.read_text())
        if keep is not None:
            self.lists = {k: v[:keep] if isinstance(v, list) else v for k, v in self.lists.items()}
            self.write_datalist()
        self.case = self.lists["training"][0]

    def path(self, key: str) -> Path:
        return self.root / self.case[key]

    def replace(self, key: str, data=None, affine=None, raw: bytes | None = None, dtype=None) -> Path:
        path = self.path(key)
        src = nib.load(str(path))
        data = np.asarray(src.dataobj) if data is None and raw is None else data
        path.unlink()
        if raw is not None:
            path.write_bytes(raw)
        else:
            nib.save(nib.Nifti1Image(data, src.affine if affine is None else affine, dtype=dtype), str(path))
        return path

    def original(self, key: str):
        img = nib.load(str(self.path(key)))
        return np.asarray(img.dataobj), img.affine

    def write_datalist(self):
        self.datalist.write_text(json.dumps(self.lists))

    def dataset_json(self) -> tuple[Path, dict]:
        path = self.root / "dataset.json"
        return path, json.loads(path.read_text())

    def site_yaml(self, **extra) -> Path:
        return make_site(self.tmp, "site-1", self.task, self.root, self.datalist, **extra)


def patch_header(path: Path, **fields) -> Path:
    """Set raw NIfTI-1 header fields of a written file (``dim=[...]``, ``scl_inter=inf`` ...), unchecked."""
    compressed = path.name.endswith(".gz")
    raw = bytearray(gzip.decompress(path.read_bytes()) if compressed else path.read_bytes())
    header = np.ndarray((), dtype=nib.nifti1.header_dtype, buffer=raw)
    for key, value in fields.items():
        header[key] = value
    path.write_bytes(gzip.compress(bytes(raw)) if compressed else bytes(raw))
    return path


def declared_only(path: Path, header: nib.Nifti1Header, data: bytes = b"") -> Path:
    """A file holding a header (and ``data``), whatever size the header declares."""
    header.set_data_offset(header.single_vox_offset)
    with gzip.open(path, "wb") as fh:
        header.write_to(fh)
        fh.write(b"\0" * (header.single_vox_offset - header.sizeof_hdr))
        fh.write(data)
    return path


def gzip_bomb(path: Path, side: int = 512, dtype=np.int16) -> Path:
    """A NIfTI of ``side``^3 zero voxels: a few hundred KB that inflate to ``side**3 * itemsize`` bytes."""
    header = nib.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(dtype)
    header.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    header.set_data_offset(header.single_vox_offset)
    plane = bytes(side * side * np.dtype(dtype).itemsize)
    with gzip.open(path, "wb", compresslevel=9) as fh:
        header.write_to(fh)
        fh.write(b"\0" * (header.single_vox_offset - header.sizeof_hdr))
        for _ in range(side):
            fh.write(plane)
    return path


@dataclass(frozen=True)
class Expect:
    """What the check must report for one broken input."""

    file: Path
    kind: str
    count: int = 1
    fatal: bool = True


# Files -------------------------------------------------------------------------------------------
def break_rgb_image(b):
    data, _ = b.original("image")
    rgb = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    return Expect(b.replace("image", data=rgb), "unsupported_dtype")


def break_complex_image(b):
    data, _ = b.original("image")
    return Expect(b.replace("image", data=data.astype(np.complex64)), "unsupported_dtype")


def break_boolean_image(b):
    data, _ = b.original("label")
    path = b.replace("image", data=data.astype(np.uint8))
    return Expect(patch_header(path, datatype=1, bitpix=1), "unsupported_dtype")  # NIfTI "binary"


def break_label_complex(b):
    data, _ = b.original("label")
    return Expect(b.replace("label", data=data.astype(np.complex64)), "unsupported_dtype")


def break_nifti2_declaring_100000_squared(b):
    header = nib.Nifti2Header()
    header.set_data_shape((100_000, 100_000, 1))
    header.set_data_dtype(np.int16)
    header.set_sform(np.diag([0.5, 0.5, 2.0, 1.0]), code=1)
    path = b.path("image")
    path.unlink()
    return Expect(declared_only(path, header, b"\0" * 1024), "too_large")


def break_too_large_after_resampling(b):
    # 512^3 is within the limit, but at 10 mm it becomes 1707 x 1707 x 1280 voxels at 3 x 3 x 4 mm
    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 512))
    header.set_data_dtype(np.int16)
    header.set_sform(np.diag([10.0, 10.0, 10.0, 1.0]), code=1)
    path = b.path("image")
    path.unlink()
    return Expect(declared_only(path, header), "too_large")


def break_truncated_header(b):
    raw = gzip.decompress(b.path("image").read_bytes())
    return Expect(b.replace("image", raw=gzip.compress(raw[:200])), "truncated_file")


def break_huge_vox_offset(b):
    return Expect(patch_header(b.replace("image"), vox_offset=2.0e9), "bad_header")


def break_negative_dimension(b):
    path = b.replace("image")
    dim = nib.load(str(path)).header["dim"].copy()
    dim[2] = -dim[2]
    return Expect(patch_header(path, dim=dim), "bad_header")


def break_infinite_intercept(b):
    return Expect(patch_header(b.replace("image"), scl_slope=1.0, scl_inter=np.inf), "bad_header")


def break_gzip_named_nii(b):
    source = b.path("image")
    target = source.with_name(source.name.replace(".nii.gz", ".nii"))
    shutil.copyfile(source, target)
    b.lists["training"][0] = {**b.case, "image": str(target.relative_to(b.root))}
    b.write_datalist()
    return Expect(target, "not_nifti")


def break_directory_as_image(b):
    path = b.path("image")
    path.unlink()
    path.mkdir()
    return Expect(path, "not_a_file")


def break_fifo_as_image(b):
    path = b.path("image")
    path.unlink()
    os.mkfifo(path)  # opening it would block until a writer comes: the check must not
    return Expect(path, "not_a_file")


def break_dangling_symlink(b):
    path = b.path("image")
    path.unlink()
    path.symlink_to(path.with_name("gone.nii.gz"))
    return Expect(path, "missing_file")


def break_symlink_out_of_root(b):
    path = b.path("image")
    path.unlink()
    path.symlink_to(b.source / b.case["image"])
    return Expect(path, "symlink_escapes_root")


def _with_affine(b, affine) -> Path:
    data, _ = b.original("image")
    return b.replace("image", data=data, affine=affine)


def break_singular_affine(b):
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[:3, 1] = affine[:3, 0]  # the second voxel axis runs along the first
    return Expect(_with_affine(b, affine), "bad_affine")


def break_nan_in_affine(b):
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[0, 3] = np.nan
    return Expect(_with_affine(b, affine), "bad_affine")


def break_spacing_0_01_mm(b):
    return Expect(_with_affine(b, np.diag([0.01, 0.01, 0.01, 1.0])), "bad_spacing")


def break_spacing_50_mm(b):
    return Expect(_with_affine(b, np.diag([1.5, 1.5, 50.0, 1.0])), "bad_spacing")


def break_sheared_affine(b):
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[1, 2] = 0.6  # slices tilted ~17 degrees against the slice axis (gantry tilt)
    return Expect(_with_affine(b, affine), "sheared_affine")


def break_uint8_ct(b):
    data, _ = b.original("image")
    display = np.clip((data.astype(np.float32) + 160.0) / 400.0 * 255.0, 0, 255).astype(np.uint8)
    return Expect(b.replace("image", data=display), "not_hounsfield")


def break_all_zero_ct(b):
    data, _ = b.original("image")
    return Expect(b.replace("image", data=np.zeros_like(data)), "constant_image")


def break_all_air_ct(b):
    data, _ = b.original("image")
    air = (-1000 + np.random.default_rng(0).integers(0, 60, data.shape)).astype(np.int16)
    return Expect(b.replace("image", data=air), "no_foreground")


def break_beyond_float32(b):
    data, _ = b.original("image")
    data = data.astype(np.float64)
    data[0, 0, 0] = 1e300
    return Expect(b.replace("image", data=data), "non_finite_voxels")


def break_single_slice(b):
    data, affine = b.original("image")
    return Expect(b.replace("image", data=data[:, :, :1], affine=affine), "too_small_after_resampling")


def break_five_dimensional(b):
    data, _ = b.original("image")
    return Expect(b.replace("image", data=data[..., None, None]), "wrong_dimensions")


def break_label_half_values(b):
    data, _ = b.original("label")
    return Expect(b.replace("label", data=data.astype(np.float32) * 0.5), "bad_label_values")


def break_label_negative(b):
    data, _ = b.original("label")
    data = data.astype(np.int16)
    data[data == 1] = -1
    return Expect(b.replace("label", data=data), "bad_label_values")


def break_label_noise(b):
    data, _ = b.original("label")
    noise = np.random.default_rng(0).integers(0, 1000, data.shape).astype(np.int16)
    return Expect(b.replace("label", data=noise), "bad_label_values")


def break_label_scaled_by_header(b):
    return Expect(patch_header(b.replace("label"), scl_slope=0.5, scl_inter=0.0), "bad_label_values")


# Datalist and dataset.json -------------------------------------------------------------------------
def _dataset_json(b, **changes) -> Path:
    path, info = b.dataset_json()
    info.update(changes)
    path.write_text(json.dumps(info))
    return path


def break_num_training_list(b):
    return Expect(_dataset_json(b, numTraining=[1, 2]), "bad_dataset_json")


def break_num_training_string(b):
    return Expect(_dataset_json(b, numTraining="10"), "bad_dataset_json")


def break_dataset_json_training_entry(b):
    path, info = b.dataset_json()
    return Expect(_dataset_json(b, training=[*info["training"][:-1], ["imagesTr/x.nii.gz"]]), "bad_dataset_json")


def break_dataset_json_nested(b):
    path, _ = b.dataset_json()
    path.write_text("[" * 5000 + "]" * 5000)
    return Expect(path, "bad_dataset_json")


def break_class_names_swapped(b):
    return Expect(_dataset_json(b, labels={"0": "spleen", "1": "background"}), "class_names_swapped", count=2)


def break_datalist_nested(b):
    b.datalist.write_text('{"training": ' + "[" * 20000 + "]" * 20000 + "}")
    return Expect(b.datalist, "bad_datalist")


def break_datalist_fifo(b):
    b.datalist.unlink()
    os.mkfifo(b.datalist)
    return Expect(b.datalist, "bad_datalist")


def break_datalist_65_mb(b):
    with open(b.datalist, "r+b") as fh:
        fh.truncate(65 * 1024 * 1024)  # sparse: no disk used, but larger than any datalist
    return Expect(b.datalist, "bad_datalist")


def break_datalist_5000_digit_number(b):
    b.datalist.write_text(json.dumps(b.lists)[:-1] + ', "seed": ' + "9" * 5000 + "}")
    return Expect(b.datalist, "bad_datalist")


def break_duplicate_case(b):
    b.lists["training"].append(dict(b.case))
    b.write_datalist()
    return Expect(b.path("image"), "duplicate_case")


def break_training_case_in_validation(b):
    b.lists["validation"].append(dict(b.case))
    b.write_datalist()
    return Expect(b.path("image"), "split_leakage")


def break_validation_case_in_test(b):
    b.case = b.lists["validation"][0]
    b.lists["test"].append(dict(b.case))
    b.write_datalist()
    return Expect(b.path("image"), "split_leakage")


def break_empty_validation(b):
    b.lists["validation"] = []
    b.write_datalist()
    return Expect(b.datalist, "empty_split")


def break_entry_image_not_a_string(b):
    b.lists["training"][0] = {"image": 5, "label": b.case["label"]}
    b.write_datalist()
    return Expect(b.datalist, "bad_entry")


def break_entry_with_nul(b):
    b.lists["training"][0] = {"image": b.case["image"] + "\0.txt", "label": b.case["label"]}
    b.write_datalist()
    return Expect(b.datalist, "bad_entry")


HOSTILE = [
    break_rgb_image, break_complex_image, break_boolean_image, break_label_complex,
    break_nifti2_declaring_100000_squared, break_too_large_after_resampling, break_truncated_header,
    break_huge_vox_offset, break_negative_dimension, break_infinite_intercept, break_gzip_named_nii,
    break_directory_as_image, break_fifo_as_image, break_dangling_symlink, break_symlink_out_of_root,
    break_singular_affine, break_nan_in_affine, break_spacing_0_01_mm, break_spacing_50_mm, break_sheared_affine,
    break_uint8_ct, break_all_zero_ct, break_all_air_ct, break_beyond_float32, break_single_slice,
    break_five_dimensional, break_label_half_values, break_label_negative, break_label_noise,
    break_label_scaled_by_header,
    break_num_training_list, break_num_training_string, break_dataset_json_training_entry,
    break_dataset_json_nested, break_class_names_swapped, break_datalist_nested, break_datalist_fifo,
    break_datalist_65_mb, break_datalist_5000_digit_number, break_duplicate_case,
    break_training_case_in_validation, break_validation_case_in_test, break_empty_validation,
    break_entry_image_not_a_string, break_entry_with_nul,
]
