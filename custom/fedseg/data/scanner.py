"""``fedseg data split --mode scanner``: non-IID sites that differ the way their scanners do.

Cases are dealt to sites exactly as the IID split deals them (:func:`fedseg.data.split.split_dataset`,
same seed and shares), then every case is rewritten for its site's scanner profile:

* intensity calibration: ``gain * x + offset`` (CT: offset in HU; other modalities: no offset);
* noise: added Gaussian noise (CT: std in HU; other modalities: std as a fraction of the case's
  99th-percentile intensity, per channel);
* slice thickness: resampled along the slice axis (the third voxel axis) to the site's thickness,
  averaging over the slab when slices get thicker (partial volume), nearest neighbour for labels;
* field of view: a centred in-plane crop keeping a fraction of each in-plane axis.

The output folder becomes a dataset of its own: ``site-K/imagesTr``, ``site-K/labelsTr``, a
``dataset.json`` listing every rewritten case, one datalist per site plus the pooled
``site-All.json`` (paths relative to the output folder, which is the sites' ``data_root``), and
``scanners.json`` with each site's profile. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import uniform_filter1d

from fedseg.data.datalist import SPLITS, write_datalist
from fedseg.data.msd import read_dataset_info, read_json, write_dataset_json
from fedseg.data.phantoms.nifti import save_nifti
from fedseg.data.split import POOLED, split_dataset

CT_RANGE = (-1024.0, 3071.0)  # what a CT scanner can store; rewritten values are clipped to it
SLICE_MM = (1.5, 5.0, 3.0, 2.0, 4.0)  # thicknesses handed out to sites in turn (seeded order)


def seed_from(*parts: int) -> int:
    """A 32-bit seed mixed from several integers (as fedseg.transforms.seed_from, without importing MONAI)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


@dataclass(frozen=True)
class ScannerProfile:
    """How one site's scanner differs from the source data."""

    gain: float
    offset: float  # CT: HU added after the gain; ignored for other modalities
    noise_std: float  # CT: HU; other modalities: fraction of the channel's 99th percentile
    slice_mm: float  # thickness along the slice (third voxel) axis after resampling
    fov: float  # fraction of each in-plane axis kept, centred


def site_profiles(sites: int, seed: int = 0, *, ct: bool = True) -> list[ScannerProfile]:
    """Profiles spread evenly over plausible ranges and shuffled by ``seed``, so that sites always differ."""
    rng = np.random.default_rng(seed_from(seed, 7))

    def spread(lo: float, hi: float) -> list[float]:
        values = np.linspace(lo, hi, sites) if sites > 1 else np.asarray([(lo + hi) / 2])
        return [float(v) for v in rng.permutation(values)]

    gains = spread(0.9, 1.1)
    offsets = spread(-40.0, 40.0) if ct else [0.0] * sites  # MR intensities have no absolute scale to shift
    noise = spread(0.0, 30.0) if ct else spread(0.0, 0.05)
    fovs = spread(0.75, 1.0)
    start = int(rng.integers(len(SLICE_MM)))
    slices = [SLICE_MM[(start + k) % len(SLICE_MM)] for k in range(sites)]
    return [ScannerProfile(round(g, 3), round(o, 1), round(n, 4), s, round(f, 3))
            for g, o, n, s, f in zip(gains, offsets, noise, slices, fovs)]


def _resample_slices(data: np.ndarray, spacing: float, target: float, *, label: bool) -> tuple[np.ndarray, float]:
    """Resample axis 2 from ``spacing`` to ``target`` mm, keeping the covered extent; return data and index shift."""
    factor = target / spacing
    n_out = max(1, int(round(data.shape[2] / factor)))
    first = 0.5 * factor - 0.5  # old-index position of the first new slice's centre
    pos = np.clip(first + factor * np.arange(n_out), 0, data.shape[2] - 1)
    if label:
        return np.take(data, np.rint(pos).astype(int), axis=2), first
    if factor > 1:  # a thick slice integrates the slab it covers
        data = uniform_filter1d(data.astype(np.float32), size=max(1, int(round(factor))), axis=2, mode="nearest")
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, data.shape[2] - 1)
    w = (pos - lo).reshape((1, 1, -1) + (1,) * (data.ndim - 3)).astype(np.float32)
    return np.take(data, lo, axis=2) * (1 - w) + np.take(data, hi, axis=2) * w, first


def _fov_crop(shape: tuple[int, ...], fov: float) -> tuple[slice, slice, int, int]:
    keep = [max(1, int(round(n * fov))) for n in shape[:2]]
    start = [(n - k) // 2 for n, k in zip(shape[:2], keep)]
    return slice(start[0], start[0] + keep[0]), slice(start[1], start[1] + keep[1]), start[0], start[1]


def rewrite_case(image_in: Path, label_in: Path, image_out: Path, label_out: Path, profile: ScannerProfile,
                 seed: int, *, ct: bool) -> None:
    """Write one case as the site's scanner would have acquired it (image and label on the same new grid)."""
    img, lab = nib.load(str(image_in)), nib.load(str(label_in))
    data = np.asarray(img.dataobj, dtype=np.float32)
    labels = np.asarray(lab.dataobj).astype(np.uint8)
    affine = img.affine.copy()
    sx, sy, i0, j0 = _fov_crop(data.shape, profile.fov)
    data, labels = data[sx, sy], labels[sx, sy]
    affine[:3, 3] = affine[:3, :3] @ np.asarray([i0, j0, 0.0]) + affine[:3, 3]
    spacing = float(np.linalg.norm(affine[:3, 2]))
    data, first = _resample_slices(data, spacing, profile.slice_mm, label=False)
    labels, _ = _resample_slices(labels, spacing, profile.slice_mm, label=True)
    affine[:3, 3] = affine[:3, 2] * first + affine[:3, 3]
    affine[:3, 2] *= profile.slice_mm / spacing
    rng = np.random.default_rng(seed)
    if ct:
        data = data * profile.gain + profile.offset + rng.normal(0.0, profile.noise_std, data.shape)
        data = np.rint(np.clip(data, *CT_RANGE)).astype(np.int16)
    else:
        channels = data.reshape(data.shape[:3] + (-1,))
        scale = np.percentile(channels, 99, axis=(0, 1, 2))
        noisy = channels * profile.gain + rng.normal(0.0, 1.0, channels.shape) * scale * profile.noise_std
        data = np.clip(noisy, 0, None).reshape(data.shape).astype(img.get_data_dtype())
    save_nifti(image_out, data, affine, description="fedseg scanner-split")
    save_nifti(label_out, labels, affine, description="fedseg scanner-split label")


def scanner_split(dataset: Path, sites: int, out: Path, seed: int = 0, *, shares: list[float] | None = None,
                  profiles: list[ScannerProfile] | None = None, val_cases: int | None = None,
                  test_cases: int | None = None) -> dict[str, Path]:
    """Deal cases as the IID split does, rewrite each for its site's scanner; return the datalists written.

    ``out`` must not be ``dataset`` itself: it becomes the sites' data root, with its own ``dataset.json``.
    """
    dataset, out = Path(dataset), Path(out)
    if out.resolve() == dataset.resolve():
        raise ValueError("--out must be a new folder for a scanner split: it receives rewritten copies of the cases")
    info = read_dataset_info(dataset)
    ct = info.modalities == ("CT",)
    profiles = profiles or site_profiles(sites, seed, ct=ct)
    if len(profiles) != sites:
        raise ValueError(f"{len(profiles)} scanner profiles given for {sites} sites")
    with tempfile.TemporaryDirectory() as tmp:
        iid = split_dataset(dataset, sites, Path(tmp), seed=seed, shares=shares, val_cases=val_cases,
                            test_cases=test_cases)
        lists = {name: read_json(path, "datalist") for name, path in iid.items() if name != POOLED}
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    pooled: dict[str, list[dict]] = {s: [] for s in SPLITS}
    every: list[dict[str, str]] = []
    for k, (name, lists_k) in enumerate(sorted(lists.items(), key=lambda kv: int(kv[0].split("-")[1]))):
        splits: dict[str, list[dict]] = {}
        for split in SPLITS:
            splits[split] = []
            for i, item in enumerate(lists_k.get(split, [])):
                new = {key: f"{name}/{item[key]}" for key in ("image", "label")}
                rewrite_case(dataset / item["image"], dataset / item["label"], out / new["image"], out / new["label"],
                             profiles[k], seed_from(seed, k, SPLITS.index(split), i), ct=ct)
                splits[split].append(new)
                every.append(new)
            pooled[split].extend(splits[split])
        written[name] = write_datalist(out / f"{name}.json", splits, site=name, seed=seed)
    written[POOLED] = write_datalist(out / f"{POOLED}.json", pooled, site=POOLED, seed=seed)
    source = read_json(dataset / "dataset.json", "dataset description (dataset.json)")
    write_dataset_json(out, name=f"{info.name}_scanner", description=f"{source.get('description', info.name)}; "
                       f"rewritten per site by fedseg data split --mode scanner (seed {seed})",
                       modalities=info.modalities, labels=info.labels, training=every,
                       tensor_size=str(source.get("tensorImageSize", "3D")))
    (out / "scanners.json").write_text(json.dumps(
        {"seed": seed, "source": str(dataset.resolve()),
         "sites": {f"site-{k + 1}": asdict(p) for k, p in enumerate(profiles)}}, indent=2) + "\n")
    return written
