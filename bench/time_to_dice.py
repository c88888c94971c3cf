"""Time to a Dice bar: how long the engine takes, with MONAI's fast-training levers, to segment phantoms well.

The engine trains the task (``--full``: the card's spleen recipe) on the single-site phantoms with
the levers of MONAI's fast-training guide that apply: the cached volumes on the device, random
crops and augmentation there, a ``ThreadDataLoader`` without worker processes (``Runtime``'s
``device_cache``, on by default on CUDA), AMP (``precision: auto``: fp16 on CUDA, bf16 on CPUs
with AMX) and cuDNN autotuning (``deterministic=False``). Every ``ttd_eval_every`` iterations it
scores the validation phantoms with the task's sliding window; the clock (training and
validation together, data caching excluded) stops when their mean Dice reaches ``ttd_bar`` or
after ``ttd_budget_s``. Patches per second are those of the training steps alone; the throughput
comparison gives the tutorial loop's on the same machine.
"""

from __future__ import annotations

import time

from bench.common import Settings, resolve_device


def run(settings: Settings, items: dict[str, list[dict]]) -> dict:
    from fedseg.engine import Runtime, SegmentationEngine
    from fedseg.tasks import get_task

    spec = get_task("spleen", settings.variant)
    device = resolve_device(settings.device)
    runtime = Runtime.create(device, num_threads=settings.threads, deterministic=False,
                             device_cache=True if settings.mode == "test" else None)
    engine = SegmentationEngine(spec, runtime, seed=0)
    t0 = time.perf_counter()
    train, val = engine.train_data(items["training"]), engine.eval_data(items["validation"])
    setup = time.perf_counter() - t0
    curve, train_s, iterations, reached = [], 0.0, 0, None
    start = time.perf_counter()
    while True:  # at least one round of training and validation, then until the bar or the budget
        t = time.perf_counter()
        engine.train(train, iterations=settings.ttd_eval_every, label="time to Dice")
        train_s += time.perf_counter() - t
        iterations += settings.ttd_eval_every
        dice = engine.evaluate(val, label="validation").mean
        curve.append({"seconds": time.perf_counter() - start, "iterations": iterations, "val_dice": dice})
        if dice >= settings.ttd_bar:
            reached = curve[-1]["seconds"]
        if reached is not None or curve[-1]["seconds"] >= settings.ttd_budget_s:
            break
    patches = iterations * spec.batch_size * spec.num_samples
    return {"task": f"spleen/{spec.variant_name}", "device": device, "precision": runtime.precision,
            "device_cache": runtime.caches_on_device, "loader": type(train.loader).__name__,
            "bar": settings.ttd_bar, "budget_s": settings.ttd_budget_s, "setup_s": setup,
            "seconds_to_bar": reached, "reached": reached is not None, "iterations": iterations,
            "train_patches_per_s": patches / train_s if train_s else float("nan"),
            "best_val_dice": max(c["val_dice"] for c in curve) if curve else float("nan"), "curve": curve}


def rows(result: dict) -> list[list]:
    got = (f"{result['seconds_to_bar']:.0f} s" if result["reached"]
           else f"not reached in {result['budget_s']:.0f} s (best {result['best_val_dice']:.3f})")
    return [[f"time to validation Dice {result['bar']} ({result['task']}, {result['precision']})", got,
             f"{result['iterations']} it, {result['train_patches_per_s']:.3g} patches/s, {result['loader']}"
             f"{', cache on device' if result['device_cache'] else ''}",
             f"caching {result['setup_s']:.0f} s (not counted)"]]
