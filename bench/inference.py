"""Inference: ``fedseg infer`` against plain MONAI, from the NIfTI files on disk to mask files.

fedseg's side is the command itself, run in this process: ``fedseg infer --task spleen --model M
--image V1 ... Vn --out DIR/`` (``fedseg.cli.main``), so model loading, the input checks, the
body crop, the sliding windows, the way back to each input's grid and the compressed uint8 mask
files are all in its time, with the runtime ``precision: auto`` gives this machine.

The reference is what a MONAI user writes after the spleen tutorial's "inference on test set"
part, at the tiny variant's sizes: ``LoadImaged``, ``EnsureChannelFirstd``, ``Orientationd``,
``Spacingd``, ``ScaleIntensityRanged``, ``CropForegroundd`` over a ``Dataset`` and a
``DataLoader(batch_size=1, num_workers=4)``; ``sliding_window_inference`` (roi the variant's
window, ``sw_batch_size=4``); then ``decollate_batch`` and ``Invertd`` (back to the input grid,
``nearest_interp=False``), ``AsDiscreted(argmax=True)`` and ``SaveImaged`` (uint8, no resampling),
in fp32 with the model built and its weights loaded in the timing too. It runs twice: with the
window settings fedseg uses (overlap 0.5, Gaussian blending), where the two must agree on Dice
(``|mean Dice difference| <= AGREEMENT`` over all volumes), and with
``sliding_window_inference``'s defaults (overlap 0.25, constant blending), the tutorial's call.
Every written mask is scored against its label file with the same Dice. Result: volumes per
second over the whole run.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import Settings, ratio, resolve_device

AGREEMENT = 0.005  # mean Dice difference under which fedseg and plain MONAI count as agreeing
TUTORIAL_WORKERS = 4
TUTORIAL_SW_BATCH = 4


def mask_dice(mask_path: Path, label_path: str) -> float:
    """Foreground Dice of a mask file against a label file on the same grid (1.0 when both are empty)."""
    import nibabel as nib

    mask, label = (np.asarray(nib.load(str(p)).dataobj) for p in (mask_path, label_path))
    mask = mask.reshape(label.shape) if mask.size == label.size else mask  # a saved (1, ...) channel axis
    if mask.shape != label.shape:
        raise ValueError(f"{mask_path}: mask {mask.shape} and label {label.shape} are on different grids")
    m, lab = mask > 0, label > 0
    total = m.sum() + lab.sum()
    return float(2 * np.logical_and(m, lab).sum() / total) if total else 1.0


def tutorial_test_transforms(spec):
    """The tutorial's inference preprocessing (its order: orientation and spacing first), at ``spec``'s sizes."""
    from monai import transforms as mt

    it = spec.intensity
    return mt.Compose([
        mt.LoadImaged(keys="image"),
        mt.EnsureChannelFirstd(keys="image"),
        mt.Orientationd(keys=["image"], axcodes="RAS"),
        mt.Spacingd(keys=["image"], pixdim=spec.spacing, mode="bilinear"),
        mt.ScaleIntensityRanged(keys=["image"], a_min=it.a_min, a_max=it.a_max, b_min=0.0, b_max=1.0, clip=True),
        mt.CropForegroundd(keys=["image"], source_key="image"),
    ])


def tutorial_inference(spec, model_path: Path, images: list[str], out_dir: Path, device: torch.device, *,
                       overlap: float, mode: str, workers: int = TUTORIAL_WORKERS) -> list[Path]:
    """Plain MONAI from files to mask files; returns the masks in the order of ``images``."""
    from monai import transforms as mt
    from monai.data import DataLoader, Dataset, decollate_batch
    from monai.inferers import sliding_window_inference
    from monai.networks.layers import Norm
    from monai.networks.nets import UNet

    net = spec.network
    model = UNet(spatial_dims=3, in_channels=spec.in_channels, out_channels=spec.out_channels, channels=net.channels,
                 strides=net.strides, num_res_units=net.num_res_units, norm=Norm.BATCH).to(device)
    model.load_state_dict(torch.load(model_path, map_location=device, weights_only=True)["state_dict"])
    model.eval()
    test_transforms = tutorial_test_transforms(spec)
    loader = DataLoader(Dataset(data=[{"image": i} for i in images], transform=test_transforms), batch_size=1,
                        num_workers=workers)
    post = mt.Compose([
        mt.Invertd(keys="pred", transform=test_transforms, orig_keys="image", nearest_interp=False, to_tensor=True),
        mt.AsDiscreted(keys="pred", argmax=True),
        mt.SaveImaged(keys="pred", output_dir=str(out_dir), output_postfix="seg", output_dtype=np.uint8,
                      resample=False, separate_folder=False, print_log=False),
    ])
    with torch.no_grad():
        for batch in loader:
            batch["pred"] = sliding_window_inference(batch["image"].to(device), spec.sw_roi, TUTORIAL_SW_BATCH, model,
                                                     overlap=overlap, mode=mode)
            for item in decollate_batch(batch):
                post(item)
    return [Path(out_dir) / f"{_stem(i)}_seg.nii.gz" for i in images]


def _stem(path: str) -> str:
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(name).stem


def fedseg_infer(model_path: Path, images: list[str], out_dir: Path, threads: int, device: str) -> list[Path]:
    """``fedseg infer`` on every image in one call (one model load), as a user types it."""
    from fedseg.cli import main

    rc = main(["infer", "--task", "spleen", "--model", str(model_path), "--image", *images, "--out",
               f"{out_dir}/", "--threads", str(threads), "--device", device])
    if rc != 0:
        raise RuntimeError(f"fedseg infer exited with {rc}")
    return [Path(out_dir) / f"{_stem(i)}_mask.nii.gz" for i in images]


def _timed(run, volumes: list[dict], out_dir: Path) -> dict:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    start = time.perf_counter()
    masks = run([v["image"] for v in volumes], out_dir)
    seconds = time.perf_counter() - start
    dice = [mask_dice(m, v["label"]) for m, v in zip(masks, volumes)]
    return {"volumes": len(volumes), "seconds": seconds, "volumes_per_s": len(volumes) / seconds,
            "dice": float(np.mean(dice)), "dice_per_volume": dice}


def train_briefly(spec, items: list[dict], device: str, threads: int, iterations: int, out: Path,
                  trained: tuple | None = None) -> Path:
    """A model trained ``iterations`` steps with the engine, saved as fedseg saves models.

    ``trained`` is ``(engine, loader data, iterations done)`` from the throughput comparison, to go on from.
    """
    from fedseg.checkpoint import save_model
    from fedseg.engine import Runtime, SegmentationEngine

    if trained is None:
        engine = SegmentationEngine(spec, Runtime.create(device, num_threads=threads), seed=0)
        trained = (engine, engine.train_data(items), 0)
    engine, data, done = trained
    if iterations > done:
        engine.train(data, iterations=iterations - done)
    return save_model(Path(out), engine.get_weights(), spec)


def run(settings: Settings, items: dict[str, list[dict]], work: Path, trained: tuple | None = None) -> dict:
    from fedseg.tasks import get_task

    spec = get_task("spleen", settings.variant)
    device = resolve_device(settings.device)
    model_path = train_briefly(spec, items["training"], device, settings.threads, settings.infer_train_iterations,
                               work / "infer_model.pt", trained)
    # Held-out cases first; training cases make up the count (this compares two ways of inferring, not the model).
    volumes = (items["test"] + items["validation"] + items["training"])[: settings.infer_volumes]
    dev = torch.device(device)
    out = Path(work) / "inference"
    workers = settings.tutorial_workers
    ways = {
        "fedseg": lambda imgs, d: fedseg_infer(model_path, imgs, d, settings.threads, device),
        "monai_same_settings": lambda imgs, d: tutorial_inference(spec, model_path, imgs, d, dev,
                                                                  overlap=spec.sw_overlap, mode="gaussian",
                                                                  workers=workers),
        "monai_defaults": lambda imgs, d: tutorial_inference(spec, model_path, imgs, d, dev, overlap=0.25,
                                                             mode="constant", workers=workers),
    }
    runs: dict[str, list[dict]] = {k: [] for k in ways}
    for _ in range(settings.infer_repeats):  # alternate: others' load on the machine hits each alike
        for key, way in ways.items():
            runs[key].append(_timed(way, volumes, out / key))
    best = {k: max(v, key=lambda r: r["volumes_per_s"]) for k, v in runs.items()}
    same = abs(best["fedseg"]["dice"] - best["monai_same_settings"]["dice"])
    per_volume = max(abs(a - b) for a, b in zip(best["fedseg"]["dice_per_volume"],
                                                best["monai_same_settings"]["dice_per_volume"]))
    from fedseg.engine import Runtime

    runtime = Runtime.create(device, num_threads=settings.threads)
    return {
        "task": f"spleen/{spec.variant_name}", "device": device, "threads": settings.threads,
        "volumes": len(volumes), "model_trained_iterations": settings.infer_train_iterations,
        "fedseg_runtime": {"precision": runtime.precision, "memory_format": str(runtime.memory_format(3))},
        "window_settings": {"fedseg": {"overlap": spec.sw_overlap, "mode": "gaussian", "sw_batch_size":
                                       spec.sw_batch_size, "roi": list(spec.sw_roi)},
                            "monai_defaults": {"overlap": 0.25, "mode": "constant", "sw_batch_size":
                                               TUTORIAL_SW_BATCH, "roi": list(spec.sw_roi)}},
        **best, "runs": runs,
        "ratio_fedseg_over_monai_same_settings": ratio(best["fedseg"]["volumes_per_s"],
                                                       best["monai_same_settings"]["volumes_per_s"]),
        "ratio_fedseg_over_monai_defaults": ratio(best["fedseg"]["volumes_per_s"],
                                                  best["monai_defaults"]["volumes_per_s"]),
        "dice_difference": same, "dice_difference_max_per_volume": per_volume, "dice_tolerance": AGREEMENT,
        "dice_agree": same <= AGREEMENT,
        "dice_difference_defaults": abs(best["fedseg"]["dice"] - best["monai_defaults"]["dice"]),
        "goal_ratio": 2.0,
    }


def rows(result: dict) -> list[list]:
    rt = result["fedseg_runtime"]
    n = result["volumes"]
    agree = "agree" if result["dice_agree"] else "DISAGREE"
    return [
        [f"inference: fedseg infer ({rt['precision']}, {rt['memory_format'].split('.')[-1]})",
         f"{result['fedseg']['volumes_per_s']:.3g} volumes/s", f"Dice {result['fedseg']['dice']:.4f} ({n} volumes)",
         f"{result['ratio_fedseg_over_monai_same_settings']:.3g}x (goal >= {result['goal_ratio']})"],
        ["inference: plain MONAI, fedseg's window settings", f"{result['monai_same_settings']['volumes_per_s']:.3g} volumes/s",
         f"Dice {result['monai_same_settings']['dice']:.4f}",
         f"|Dice diff| {result['dice_difference']:.4f}: {agree} (<= {result['dice_tolerance']})"],
        ["inference: plain MONAI, sliding_window defaults", f"{result['monai_defaults']['volumes_per_s']:.3g} volumes/s",
         f"Dice {result['monai_defaults']['dice']:.4f}",
         f"fedseg {result['ratio_fedseg_over_monai_defaults']:.3g}x; |Dice diff| {result['dice_difference_defaults']:.4f}"],
    ]
