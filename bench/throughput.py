"""Training throughput: fedseg's engine against a loop written like MONAI's spleen tutorial.

Both train the task's UNet with DiceCE on the same cached volumes, through the same transform
chain (``fedseg.transforms.train_transforms`` of the same spec, so crops and augmentation are
identical), for the same number of iterations with the same torch threads. The reference is the
tutorial's shape: ``CacheDataset`` + ``monai.data.DataLoader`` (no worker processes here, like the
engine's default) and ``for batch in loader: zero_grad; loss.backward(); step``. It uses the
spec's optimizer (Novograd for spleen) so that only the loop differs; AMP only on CUDA, as the
engine does.

A third row runs the engine on a plain ``monai.data.DataLoader`` over the engine's own cached
dataset instead of its ``ThreadDataLoader``: it separates the loader's prefetch thread from the
rest of the engine's loop.
"""

from __future__ import annotations

import time

import torch

from bench.common import Settings, Stopwatch, TimedLoader, ratio


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def engine_run(engine, data, iterations: int) -> dict:
    """Time ``iterations`` steps of :meth:`SegmentationEngine.train`, with the loader wrapped to time data waits."""
    from fedseg.engine.data import TrainData

    timed = TimedLoader(data.loader)
    wrapped = TrainData(timed, data.n_cases)
    _sync(engine.runtime.device)
    start = time.perf_counter()
    engine.train(wrapped, iterations=iterations)
    _sync(engine.runtime.device)
    wall = time.perf_counter() - start
    return _rates(wall, timed.wait.total, timed.batches, timed.samples)


class ReferenceLoop:
    """The tutorial-style loop: plain MONAI objects, nothing from fedseg but the transform chain."""

    def __init__(self, spec, items: list[dict], device: torch.device, seed: int = 0):
        from monai.data import CacheDataset, DataLoader
        from monai.losses import DiceCELoss
        from monai.networks.nets import UNet
        from monai.optimizers import Novograd

        from fedseg.transforms import train_transforms

        torch.manual_seed(seed)
        net = spec.network
        self.model = UNet(spatial_dims=net.spatial_dims, in_channels=spec.in_channels, out_channels=spec.out_channels,
                          channels=net.channels, strides=net.strides, num_res_units=net.num_res_units,
                          norm=net.norm).to(device)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        opt = spec.optimizer
        self.optimizer = (Novograd(self.model.parameters(), lr=opt.lr) if opt.name == "novograd"
                          else torch.optim.Adam(self.model.parameters(), lr=opt.lr))
        self.amp = device.type == "cuda" and spec.amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.device = device
        dataset = CacheDataset(items, train_transforms(spec, seed), cache_rate=1.0, num_workers=1, progress=False)
        self.loader = DataLoader(dataset, batch_size=min(spec.batch_size, len(items)), shuffle=True, num_workers=0,
                                 generator=torch.Generator().manual_seed(seed))

    def run(self, iterations: int) -> dict:
        self.model.train()
        wait, step, samples = Stopwatch(), 0, 0
        _sync(self.device)
        start = time.perf_counter()
        while step < iterations:
            batches = iter(self.loader)
            while step < iterations:
                with wait:
                    batch = next(batches, None)
                if batch is None:
                    break
                x, y = batch["image"].to(self.device), batch["label"].to(self.device)
                self.optimizer.zero_grad()
                with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                    loss = self.loss_fn(self.model(x), y)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                step, samples = step + 1, samples + x.shape[0]
        _sync(self.device)
        return _rates(time.perf_counter() - start, wait.total, step, samples)


def _rates(wall: float, wait: float, iterations: int, samples: int) -> dict:
    return {"seconds": wall, "iterations": iterations, "samples": samples, "samples_per_s": samples / wall,
            "data_wait_fraction": wait / wall, "seconds_per_iteration": wall / max(iterations, 1)}


def run(settings: Settings, items: dict[str, list[dict]], keep: dict | None = None) -> dict:
    """Alternate engine and reference ``settings.repeats`` times; the fastest run of each counts.

    ``keep`` receives the trained engine, its loader and its iteration count (the inference
    comparison goes on training that model instead of starting another).
    """
    from monai.data import DataLoader

    from fedseg.engine import Runtime, SegmentationEngine
    from fedseg.engine.data import TrainData
    from fedseg.tasks import get_task

    from bench.common import resolve_device

    spec = get_task("spleen", settings.variant)
    runtime = Runtime.create(resolve_device(settings.device), num_threads=settings.threads)
    train_items = items["training"]
    t0 = time.perf_counter()
    engine = SegmentationEngine(spec, runtime, seed=0)
    data = engine.train_data(train_items)
    engine_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = ReferenceLoop(spec, train_items, runtime.device, seed=0)
    reference_setup = time.perf_counter() - t0
    plain = TrainData(DataLoader(data.loader.dataset, batch_size=min(spec.batch_size, len(train_items)), shuffle=True,
                                 num_workers=0, generator=torch.Generator().manual_seed(1)), data.n_cases)
    # Warm-up outside the timing: first passes pay for allocator growth and (on CUDA) cuDNN autotuning.
    engine.train(data, iterations=settings.warmup_iterations)
    reference.run(settings.warmup_iterations)
    runs: dict[str, list[dict]] = {"fedseg": [], "reference": [], "fedseg_plain_loader": []}
    for _ in range(settings.repeats):
        runs["fedseg"].append(engine_run(engine, data, settings.train_iterations))
        runs["reference"].append(reference.run(settings.train_iterations))
        runs["fedseg_plain_loader"].append(engine_run(engine, plain, settings.train_iterations))
    best = {k: max(v, key=lambda r: r["samples_per_s"]) for k, v in runs.items()}
    if keep is not None:
        keep["trained"] = (engine, data, settings.warmup_iterations + 2 * settings.repeats * settings.train_iterations)
    return {
        "task": f"spleen/{spec.variant_name}", "patch_size": list(spec.patch_size),
        "patches_per_iteration": spec.batch_size * spec.num_samples, "training_cases": len(train_items),
        "device": str(runtime.device), "amp": runtime.amp, "threads": settings.threads,
        "setup_s": {"fedseg": engine_setup, "reference": reference_setup},
        "fedseg": best["fedseg"], "reference": best["reference"], "fedseg_plain_loader": best["fedseg_plain_loader"],
        "runs": runs,
        "ratio_fedseg_over_reference": ratio(best["fedseg"]["samples_per_s"], best["reference"]["samples_per_s"]),
        "ratio_fedseg_plain_loader_over_reference": ratio(best["fedseg_plain_loader"]["samples_per_s"],
                                                          best["reference"]["samples_per_s"]),
    }


def rows(result: dict) -> list[list]:
    out = []
    names = {"fedseg": "fedseg engine", "reference": "MONAI tutorial loop",
             "fedseg_plain_loader": "fedseg engine, plain DataLoader"}
    ratios = {"fedseg": result["ratio_fedseg_over_reference"],
              "fedseg_plain_loader": result["ratio_fedseg_plain_loader_over_reference"]}
    for key, name in names.items():
        r = result[key]
        out.append([f"train throughput: {name}", f"{r['samples_per_s']:.3g} patches/s",
                    f"{r['seconds_per_iteration']:.3g} s/it, data wait {100 * r['data_wait_fraction']:.1f}%",
                    f"{ratios[key]:.3g}" if key in ratios else ""])
    return out
