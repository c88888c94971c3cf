"""Odd-but-valid and invalid NIfTI volumes for the property test of the data check.

A :class:`Recipe` says how one image/label pair is made: grid (shape, spacing, orientation,
rotation, shear), content (CT in HU, 8-bit values, constant, MR signal, huge values, NaN), voxel
types and header scaling, label values, and what is then done to the written bytes (header
fields overwritten, the file cut short, NIfTI-2, no compression). Hypothesis draws a seed,
:func:`recipe_from` makes the recipe, :func:`write_case` turns it into real files.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from hypothesis import strategies as st

IMAGE_TYPES = ("float32", "uint8", "int8", "uint16", "int32", "uint32", "int64", "uint64", "float64", "complex64",
               "rgb", "binary")
LABEL_TYPES = ("int16", "float32", "float64", "int8", "uint16", "complex64")
CONTENTS = ("ct_padded", "bytes", "constant", "zeros", "mr", "huge", "large", "nan", "air", "speckle", "tiny_range",
            "flat")
LABELS = ("empty", "two_classes", "half", "negative", "nan", "noise")
HEADER_EDITS = ("dim_doubled", "dim_huge", "vox_offset", "datatype", "qform_shifted", "sform_nan", "magic",
                "scl_inf", "intent", "units_meter", "pixdim_qfac")
SPACINGS = (0.4, 6.0, 10.0, 0.1, 0.08, 14.0, 0.01, 50.0)


@dataclass(frozen=True)
class Recipe:
    """How one image/label pair is written (every field shows in a failing example)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    axes: tuple[int, int, int]  # permutation of the voxel axes (orientation)
    flips: tuple[bool, bool, bool]
    rotation_deg: float
    shear: float
    singular: bool
    content: str
    body: float  # body radius as a fraction of the field of view
    image_type: str
    scaled: bool  # store HU as uint16 with scl_inter = -1024
    label: str
    label_type: str
    label_grid_turn_deg: float  # the label's grid turned against the image's
    header_edit: str
    edit_label: bool  # apply the header edit to the label instead of the image
    truncate: float  # 0: whole file; else keep this fraction of the (uncompressed) bytes
    nifti2: bool
    gz: bool
    channels: int  # 0: a 3D image; n: 4D with n channels in the last axis
    seed: int


def recipe_from(seed: int, task: str = "spleen") -> Recipe:
    """The recipe of one seed: mostly plausible volumes with one or two odd things, some plainly broken.

    The odds are set here, explicitly (Hypothesis' own draws favour the ends of every range, which
    would make nearly every volume broken several times over).
    """
    rng = np.random.default_rng(seed)
    mr = task == "prostate"  # T2 + ADC in one 4D file
    classes = 3 if task in ("liver", "prostate") else 2

    def pick(options, p=None):
        return options[rng.choice(len(options), p=p)]

    def rare(odds: float) -> bool:
        return bool(rng.random() < odds)

    def spacing() -> float:
        return float(pick(SPACINGS) if rare(0.05) else pick((1.5, 1.0, 2.5, 4.0, 0.8)))

    return Recipe(
        shape=(int(rng.integers(12, 65)), int(rng.integers(12, 65)),
               int(pick((24, 16, 40, 8, 3, 1), p=(0.3, 0.25, 0.2, 0.15, 0.05, 0.05)))),
        spacing=(spacing(), spacing(), spacing()),
        axes=pick(((0, 1, 2), (1, 0, 2), (2, 1, 0), (0, 2, 1))),
        flips=tuple(bool(f) for f in rng.random(3) < 0.5),
        rotation_deg=float(pick((0.0, 5.0, 30.0, 90.0), p=(0.6, 0.15, 0.15, 0.1))),
        shear=float(pick((0.0, 1e-5, 0.01, 0.3), p=(0.88, 0.04, 0.04, 0.04))),
        singular=rare(0.03),
        content=pick(CONTENTS) if rare(0.25) else "mr" if mr else "ct",
        body=float(pick((0.6, 0.3, 0.9, 0.05), p=(0.5, 0.2, 0.2, 0.1))),
        image_type=pick(IMAGE_TYPES) if rare(0.3) else "int16",
        scaled=rare(0.1),
        label=pick(LABELS) if rare(0.25) else "two_classes" if classes == 3 and rare(0.5) else "blob",
        label_type=pick(LABEL_TYPES) if rare(0.25) else "uint8",
        label_grid_turn_deg=float(pick((0.0, 0.001, 5.0), p=(0.9, 0.05, 0.05))),
        header_edit=pick(HEADER_EDITS) if rare(0.2) else "none",
        edit_label=rare(0.5),
        truncate=float(pick((0.0, 0.1, 0.6, 0.99), p=(0.9, 0.03, 0.03, 0.04))),
        nifti2=rare(0.15),
        gz=not rare(0.2),
        channels=int(pick((2, 0, 1, 3), p=(0.85, 0.05, 0.05, 0.05)) if mr else pick((0, 1, 2), p=(0.9, 0.05, 0.05))),
        seed=seed,
    )


def recipes(task: str = "spleen") -> st.SearchStrategy[Recipe]:
    """Recipes for Hypothesis: it draws the seed, :func:`recipe_from` the rest."""
    return st.integers(0, 2**32 - 1).map(lambda seed: recipe_from(seed, task))


def _affine(r: Recipe) -> np.ndarray:
    linear = np.zeros((3, 3))
    for voxel_axis, world_axis in enumerate(r.axes):
        linear[world_axis, voxel_axis] = r.spacing[voxel_axis] * (-1 if r.flips[voxel_axis] else 1)
    angle = np.radians(r.rotation_deg)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    linear = rot @ linear
    linear[0, 2] += r.shear * np.linalg.norm(linear[:, 2])
    if r.singular:
        linear[:, 1] = linear[:, 0]
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ (np.asarray(r.shape) / 2)
    return affine


def _blob(r: Recipe, scale: float, offset=(0.0, 0.0, 0.0), axes: int = 3) -> np.ndarray:
    """An ellipsoid (``axes=3``), or a cylinder along the last voxel axis (``axes=2``, like a body)."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) if n > 1 else np.zeros(1) for n in r.shape], indexing="ij")
    dist = sum((g - o) ** 2 for g, o in list(zip(grids, offset))[:axes])
    return np.broadcast_to(dist < (r.body * scale) ** 2, r.shape)


def _image(r: Recipe, rng: np.random.Generator) -> np.ndarray:
    body = _blob(r, 1.0, axes=2)
    noise = rng.normal(0, 8, r.shape)
    if r.content in ("ct", "ct_padded", "air", "nan", "huge", "speckle"):
        background = -2048.0 if r.content == "ct_padded" else -1000.0
        image = np.where(body, 40.0, background) + noise
        image[_blob(r, 0.4, (0.2, 0.0, 0.0))] = 250.0  # some bone
        if r.content == "air":
            image = -1000.0 + np.abs(noise)
        if r.content == "nan":
            image[tuple(rng.integers(0, n) for n in r.shape)] = np.nan
        if r.content == "huge":
            image[tuple(rng.integers(0, n) for n in r.shape)] = 1e300
        if r.content == "speckle":  # isolated bright voxels in air: little for a resampling to catch
            image = np.where(rng.random(r.shape) < rng.choice((0.005, 0.3, 0.7)), 100.0, -1000.0)
        return image
    if r.content == "bytes":
        return np.clip(np.where(body, 180.0, 10.0) + noise, 0, 255)
    if r.content == "constant":
        return np.full(r.shape, 300.0)
    if r.content == "zeros":
        return np.zeros(r.shape)
    if r.content == "large":  # finite in float32, but its square is not
        return np.where(body, 4e22, 1e21) + np.abs(noise) * 1e19
    if r.content == "flat":  # one value inside the body, zero around it, no noise
        return np.where(body, 600.0, 0.0)
    if r.content == "tiny_range":  # values that differ only in the last bits
        return np.where(body, 1e-30, 0.0) + np.abs(noise) * 1e-33
    return np.where(body, 600.0, 0.0) + np.abs(noise)  # "mr": positive signal


def _label(r: Recipe, rng: np.random.Generator) -> np.ndarray:
    label = _blob(r, 0.5, (0.1, -0.1, 0.0)).astype(np.float64)
    if r.label == "empty":
        label[:] = 0
    elif r.label == "two_classes":
        label[_blob(r, 0.2, (0.1, -0.1, 0.0))] = 2
    elif r.label == "half":
        label *= 0.5
    elif r.label == "negative":
        label *= -1
    elif r.label == "nan":
        label[0, 0, 0] = np.nan
    elif r.label == "noise":
        label = rng.integers(0, 400, r.shape).astype(np.float64)
    return label


def _cast(data: np.ndarray, type_name: str) -> np.ndarray:
    if type_name == "rgb":
        out = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        out["R"] = np.clip(np.nan_to_num(data), 0, 255)
        return out
    if type_name == "binary":
        return (np.nan_to_num(data) > 0).astype(np.uint8)
    dtype = np.dtype(type_name)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.nan_to_num(np.round(data), nan=0, posinf=info.max, neginf=info.min),
                       max(info.min, -2**62), min(info.max, 2**62)).astype(dtype)
    return data.astype(dtype)


def _save(r: Recipe, data: np.ndarray, path: Path, type_name: str, scaled: bool) -> None:
    klass = nib.Nifti2Image if r.nifti2 else nib.Nifti1Image
    if scaled and type_name not in ("rgb", "binary", "complex64"):
        stored = _cast(data + 1024.0, "uint16")
        img = klass(stored, _affine(r), dtype=np.uint16)
        img.header.set_slope_inter(1.0, -1024.0)
    else:
        stored = _cast(data, type_name)
        img = klass(stored, _affine(r), dtype=stored.dtype)
    img.set_qform(_affine(r), code=1)
    nib.save(img, str(path))
    if type_name == "binary":
        _edit(path, r.nifti2, {"datatype": 1, "bitpix": 1})


def _edit(path: Path, nifti2: bool, fields: dict) -> None:
    compressed = path.name.endswith(".gz")
    raw = bytearray(gzip.decompress(path.read_bytes()) if compressed else path.read_bytes())
    header_dtype = nib.nifti2.header_dtype if nifti2 else nib.nifti1.header_dtype
    header = np.ndarray((), dtype=header_dtype, buffer=raw)
    for key, value in fields.items():
        if callable(value):
            value = value(header[key].copy())
        header[key] = value
    path.write_bytes(gzip.compress(bytes(raw), compresslevel=1) if compressed else bytes(raw))


def _header_edit(r: Recipe) -> dict:
    def dims(factor=None, size=None):
        def change(dim):
            dim[1] = size if size else dim[1] * factor
            return dim
        return change

    def qfac(pixdim):
        pixdim[0] = 3.0
        return pixdim

    return {
        "none": {},
        "dim_doubled": {"dim": dims(factor=2)},
        "dim_huge": {"dim": dims(size=30000)},
        "vox_offset": {"vox_offset": lambda v: v + 16},
        "datatype": {"datatype": 64, "bitpix": 64},  # claims float64 whatever it holds
        "qform_shifted": {"qoffset_x": lambda v: v + 7.0},
        "sform_nan": {"srow_x": lambda row: np.full(4, np.nan)},
        "magic": {"magic": b"xx1"},
        "scl_inf": {"scl_slope": 1.0, "scl_inter": np.inf},
        "intent": {"intent_code": 1007},
        "units_meter": {"xyzt_units": 1},
        "pixdim_qfac": {"pixdim": qfac},
    }[r.header_edit]


def write_case(r: Recipe, folder: Path) -> tuple[Path, Path]:
    """Write the recipe's image and label; return their paths."""
    rng = np.random.default_rng(r.seed)
    suffix = ".nii.gz" if r.gz else ".nii"
    image_path, label_path = folder / f"image{suffix}", folder / f"label{suffix}"
    image, label = _image(r, rng), _label(r, rng)
    if r.channels:
        image = np.stack([image * (1 + 0.3 * c) for c in range(r.channels)], axis=-1)
    _save(r, image, image_path, r.image_type, r.scaled)
    label_recipe = replace(r, rotation_deg=r.rotation_deg + r.label_grid_turn_deg)
    _save(label_recipe, label, label_path, r.label_type, False)
    target = label_path if r.edit_label else image_path
    edit = _header_edit(r)
    if edit:
        _edit(target, r.nifti2, edit)
    if r.truncate:
        raw = gzip.decompress(target.read_bytes()) if r.gz else target.read_bytes()
        cut = raw[: int(len(raw) * r.truncate)]
        target.write_bytes(gzip.compress(cut, compresslevel=1) if r.gz else cut)
    return image_path, label_path
