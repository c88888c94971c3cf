"""Training throughput: what ``fedseg train`` runs against the MONAI spleen tutorial's own training loop.

fedseg's side is exactly what ``fedseg train --site-config SITE.yaml`` runs (``run_local``): the
runtime the site's YAML asks for (``Runtime.for_site``: device, ``precision: auto``, threads,
cache rate, loader workers), the site's data opened and checked (``open_site_data``),
``SegmentationEngine.train_data`` and ``SegmentationEngine.train(data, epochs=..., progress=...)``.
Only the training epochs are timed (validation, which ``fedseg train`` runs between them, is not).

The reference is written from MONAI's spleen tutorial (tutorials/3d_segmentation/spleen_segmentation_3d),
at the tiny variant's sizes so that it runs on a CPU:

* its transform chain, in its order and with metadata kept (MetaTensors all the way):
  ``LoadImaged``, ``EnsureChannelFirstd``, ``ScaleIntensityRanged`` (the task's window),
  ``CropForegroundd``, ``Orientationd("RAS")``, ``Spacingd`` (the variant's spacing),
  ``RandCropByPosNegLabeld`` (pos 1, neg 1, the variant's patch and crops per volume), with one
  addition the tiny sizes need: ``SpatialPadd`` to the patch before the crop;
* its data settings: ``CacheDataset(cache_rate=1.0, num_workers=4)`` and
  ``DataLoader(batch_size=2, shuffle=True, num_workers=4)``;
* its model, loss and optimizer: MONAI's ``UNet`` with batch norm (the variant's channels),
  ``DiceLoss(to_onehot_y=True, softmax=True)``, ``Adam(lr=1e-4)``, in fp32;
* its loop: ``for batch in loader: zero_grad; loss = loss_fn(model(x), y); backward; step; loss.item()``.

Both train on the same cached cases for the same number of epochs with the same torch threads;
epochs alternate between the two, after a warm-up epoch each, and the fastest epoch of each
counts. Result: patches per second. bench/README.md lists every difference that remains.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from bench.common import Settings, Stopwatch, TimedLoader, ratio

TUTORIAL_WORKERS = 4  # the tutorial's CacheDataset and DataLoader num_workers
TUTORIAL_BATCH = 2
TUTORIAL_LR = 1e-4
TRAIN_EPOCHS_DEFAULT = 100  # fedseg train --epochs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def tutorial_transforms(spec):
    """The tutorial's training chain, its order and its metadata, at ``spec``'s sizes."""
    from monai import transforms as mt

    keys = ["image", "label"]
    it = spec.intensity
    return mt.Compose([
        mt.LoadImaged(keys=keys),
        mt.EnsureChannelFirstd(keys=keys),
        mt.ScaleIntensityRanged(keys=["image"], a_min=it.a_min, a_max=it.a_max, b_min=0.0, b_max=1.0, clip=True),
        mt.CropForegroundd(keys=keys, source_key="image"),
        mt.Orientationd(keys=keys, axcodes="RAS"),
        mt.Spacingd(keys=keys, pixdim=spec.spacing, mode=("bilinear", "nearest")),
        # Not in the tutorial: at the tiny variant's 4 mm slices a cropped phantom can be thinner than
        # the patch, which RandCropByPosNegLabeld refuses (fedseg pads the same way).
        mt.SpatialPadd(keys=keys, spatial_size=spec.patch_size),
        mt.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=spec.patch_size, pos=1, neg=1,
                                  num_samples=spec.num_samples, image_key="image", image_threshold=0),
    ])


class TutorialLoop:
    """The tutorial's training loop: plain MONAI and torch objects, nothing from fedseg."""

    def __init__(self, spec, items: list[dict], device: torch.device, *, workers: int = TUTORIAL_WORKERS,
                 seed: int = 0):
        from monai.data import CacheDataset, DataLoader
        from monai.losses import DiceLoss
        from monai.networks.layers import Norm
        from monai.networks.nets import UNet
        from monai.utils import set_determinism

        set_determinism(seed=seed)
        net = spec.network
        self.model = UNet(spatial_dims=3, in_channels=spec.in_channels, out_channels=spec.out_channels,
                          channels=net.channels, strides=net.strides, num_res_units=net.num_res_units,
                          norm=Norm.BATCH).to(device)
        self.loss_fn = DiceLoss(to_onehot_y=True, softmax=True)
        self.optimizer = torch.optim.Adam(self.model.parameters(), TUTORIAL_LR)
        self.device = device
        dataset = CacheDataset(data=items, transform=tutorial_transforms(spec), cache_rate=1.0, num_workers=workers,
                               progress=False)
        self.loader = DataLoader(dataset, batch_size=TUTORIAL_BATCH, shuffle=True, num_workers=workers)

    def epoch(self) -> dict:
        self.model.train()
        wait, steps, samples, epoch_loss = Stopwatch(), 0, 0, 0.0
        _sync(self.device)
        start = time.perf_counter()
        batches = iter(self.loader)
        while True:
            with wait:
                batch = next(batches, None)
            if batch is None:
                break
            inputs, labels = batch["image"].to(self.device), batch["label"].to(self.device)
            self.optimizer.zero_grad()
            loss = self.loss_fn(self.model(inputs), labels)
            loss.backward()
            self.optimizer.step()
            epoch_loss += loss.item()
            steps, samples = steps + 1, samples + inputs.shape[0]
        _sync(self.device)
        return _rates(time.perf_counter() - start, wait.total, steps, samples)


def fedseg_site(work: Path, items: dict[str, list[dict]], threads: int, device: str) -> Path:
    """A site YAML over the bench's cases, with the defaults of the committed site_configs (and ``threads``)."""
    import json

    from fedseg.site_config import write_site_config

    root = Path(items["training"][0]["image"]).parents[1]
    datalist = Path(work) / "throughput_site" / "datalist.json"
    datalist.parent.mkdir(parents=True, exist_ok=True)
    rel = {s: [{k: str(Path(v).relative_to(root)) for k, v in it.items()} for it in items[s]] for s in items}
    datalist.write_text(json.dumps(rel, indent=1))
    return write_site_config(datalist.parent / "site-1.yaml", "site-1", {"spleen": (root, datalist)},
                             device=device, precision="auto", num_threads=threads, cache_rate=1.0, num_workers=0)


class FedsegTrain:
    """What ``fedseg train --site-config SITE.yaml`` builds and runs, epoch by epoch."""

    def __init__(self, spec, site_yaml: Path, seed: int = 0):
        from fedseg.engine import Runtime, SegmentationEngine
        from fedseg.engine.data import TrainData
        from fedseg.site_config import load_site_config
        from fedseg.site_data import open_site_data

        site = load_site_config(site_yaml)
        self.runtime = Runtime.for_site(site)
        data = open_site_data(spec, site)
        self.engine = SegmentationEngine(spec, self.runtime, class_names=data.class_names, seed=seed)
        self.data = self.engine.train_data(data.items("training"))
        self._timed = TimedLoader(self.data.loader)
        self._wrapped = TrainData(self._timed, self.data.n_cases)
        self.epochs_done = 0

    def epoch(self, total_epochs: int) -> dict:
        timed = self._timed
        timed.wait.total, timed.batches, timed.samples = 0.0, 0, 0
        e = self.epochs_done
        _sync(self.runtime.device)
        start = time.perf_counter()
        self.engine.train(self._wrapped, epochs=1, progress=(e / total_epochs, (e + 1) / total_epochs),
                          label=f"epoch {e + 1}/{total_epochs}")
        _sync(self.runtime.device)
        self.epochs_done += 1
        return _rates(time.perf_counter() - start, timed.wait.total, timed.batches, timed.samples)


def _rates(wall: float, wait: float, iterations: int, samples: int) -> dict:
    return {"seconds": wall, "iterations": iterations, "samples": samples, "samples_per_s": samples / wall,
            "data_wait_fraction": wait / wall, "seconds_per_iteration": wall / max(iterations, 1)}


def run(settings: Settings, items: dict[str, list[dict]], work: Path, keep: dict | None = None) -> dict:
    """Alternate fedseg's and the tutorial's epochs ``settings.train_epochs`` times; the fastest epoch of each counts.

    ``keep["trained"]`` receives fedseg's engine, its loader and the iterations trained (the
    inference comparison goes on training that model instead of starting another).
    """
    from fedseg.tasks import get_task

    from bench.common import resolve_device

    spec = get_task("spleen", settings.variant)
    device = resolve_device(settings.device)
    t0 = time.perf_counter()
    ours = FedsegTrain(spec, fedseg_site(work, items, settings.threads, device))
    setup_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    tutorial = TutorialLoop(spec, items["training"], ours.runtime.device, workers=settings.tutorial_workers)
    setup_tutorial = time.perf_counter() - t0
    # The learning rate follows fedseg train's cosine schedule over its default 100 epochs, as in the first
    # epochs of a real run (the inference comparison goes on training this model).
    total = TRAIN_EPOCHS_DEFAULT
    for _ in range(settings.warmup_epochs):  # allocator growth, oneDNN kernel choice, worker start-up
        ours.epoch(total)
        tutorial.epoch()
    runs: dict[str, list[dict]] = {"fedseg": [], "tutorial": []}
    for _ in range(settings.train_epochs):
        runs["fedseg"].append(ours.epoch(total))
        runs["tutorial"].append(tutorial.epoch())
    best = {k: max(v, key=lambda r: r["samples_per_s"]) for k, v in runs.items()}
    if keep is not None:
        keep["trained"] = (ours.engine, ours.data, sum(r["iterations"] for r in runs["fedseg"]) +
                           settings.warmup_epochs * ours.data.batches_per_epoch)
    rt = ours.runtime
    return {
        "task": f"spleen/{spec.variant_name}", "patch_size": list(spec.patch_size),
        "patches_per_iteration": spec.batch_size * spec.num_samples, "training_cases": len(items["training"]),
        "device": str(rt.device), "threads": settings.threads,
        "fedseg_runtime": {"precision": rt.precision, "memory_format": str(rt.memory_format(spec.spatial_dims)),
                           "loader_workers": rt.num_workers},
        "tutorial_runtime": {"precision": "fp32", "memory_format": "torch.contiguous_format",
                             "loader_workers": settings.tutorial_workers},
        "setup_s": {"fedseg": setup_ours, "tutorial": setup_tutorial},
        "fedseg": best["fedseg"], "tutorial": best["tutorial"], "runs": runs,
        "ratio_fedseg_over_tutorial": ratio(best["fedseg"]["samples_per_s"], best["tutorial"]["samples_per_s"]),
        "goal_ratio": 1.5,
    }


def rows(result: dict) -> list[list]:
    out = []
    rt = result["fedseg_runtime"]
    names = {"fedseg": f"fedseg train ({rt['precision']}, {rt['memory_format'].split('.')[-1]})",
             "tutorial": f"MONAI tutorial loop (fp32, {result['tutorial_runtime']['loader_workers']} workers)"}
    for key, name in names.items():
        r = result[key]
        note = (f"{result['ratio_fedseg_over_tutorial']:.3g}x (goal >= {result['goal_ratio']})"
                if key == "fedseg" else "")
        out.append([f"train throughput: {name}", f"{r['samples_per_s']:.3g} patches/s",
                    f"{r['seconds_per_iteration']:.3g} s/it, data wait {100 * r['data_wait_fraction']:.1f}%", note])
    return out
