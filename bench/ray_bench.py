"""Benchmark (not a test): Ray Train with N workers against the local backend in one process.

Same data (tiny spleen phantoms, one site), same recipe, same epochs: the local run takes 3 steps
of 2 volumes x 4 crops per epoch in one process with all the machine's threads; the Ray run takes
2 steps per epoch on each of 2 workers with 1 thread each (2 volumes x 4 crops per worker and
step), so both see the same 6 volumes and 24 patches per epoch. Reported:

* epoch time (training only, after a warm-up epoch) of each, and their ratio Ray / local;
* the Ray run's fixed start-up: ``ray.init``, and ``fit()`` until the first worker enters the
  training loop; and its whole overhead (wall time minus training and evaluation time).

Usage::

    python bench/ray_bench.py [--epochs 6] [--workers 2] [--out runs/ray_bench.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def prepare(root: Path, cases: int) -> Path:
    from fedseg.data.split import split_dataset
    from fedseg.data.synth import synthesize
    from fedseg.site_config import write_site_config

    data = root / "spleen"
    if not (data / "dataset.json").is_file():
        synthesize("spleen", data, cases=cases, seed=1, workers=min(2, os.cpu_count() or 1))
    split_dataset(data, 1, data / "splits", seed=0)
    return write_site_config(root / "site-1.yaml", "site-1", {"spleen": (data, data / "splits" / "site-1.json")},
                             device="cpu", num_threads=os.cpu_count() or 1, cache_rate=1.0, num_workers=0)


def bench_local(spec, site, epochs: int) -> dict:
    from fedseg.engine import Runtime, SegmentationEngine
    from fedseg.site_data import open_site_data

    start = time.perf_counter()
    data = open_site_data(spec, site)
    engine = SegmentationEngine(spec, Runtime.for_site(site), class_names=data.class_names, seed=0)
    train = engine.train_data(data.items("training"))
    setup = time.perf_counter() - start
    times = []
    for e in range(epochs):
        t0 = time.perf_counter()
        engine.train(train, epochs=1, progress=(e / epochs, (e + 1) / epochs))
        times.append(time.perf_counter() - t0)
    return {"threads": site.num_threads, "steps_per_epoch": train.batches_per_epoch, "epoch_s": times,
            "setup_s": setup, "wall_s": time.perf_counter() - start}


def bench_ray(spec, site, epochs: int, workers: int, out: Path) -> dict:
    from fedseg.ray.runner import run_ray

    result = run_ray(spec, [site], out, epochs=epochs, val_every=epochs, workers=workers)
    body = json.loads((out / "results.json").read_text())
    train_s = sum(r["seconds"] for r in body["history"])
    return {"workers": workers, "steps_per_epoch": body["steps_per_epoch"],
            "epoch_s": [r["seconds"] for r in body["history"]], "timing": body["timing"],
            "wall_s": result.wall_time_s, "train_s": train_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--work", default=None, help="folder for data and runs (default: a temporary folder)")
    p.add_argument("--out", default="runs/ray_bench.json")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from fedseg.site_config import load_site_config
    from fedseg.tasks import get_task

    spec = get_task("spleen", "tiny")
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="frb", dir="/tmp"))
    site = load_site_config(prepare(work, a.cases))
    local = bench_local(spec, site, a.epochs)
    ray = bench_ray(spec, site, a.epochs, a.workers, work / "ray_run")

    def steady(times):  # the first epoch pays for warm-up (allocator, first DDP buckets)
        return statistics.median(times[1:] if len(times) > 1 else times)

    local_epoch, ray_epoch = steady(local["epoch_s"]), steady(ray["epoch_s"])
    t = ray["timing"]
    startup = t["ray_init_s"] + t.get("fit_to_first_worker_s", 0.0)
    overhead = ray["wall_s"] - ray["train_s"]
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "task": "spleen/tiny", "epochs": a.epochs, "training_cases": 6,
        "local": {**local, "epoch_median_s": local_epoch},
        "ray": {**ray, "epoch_median_s": ray_epoch},
        "ratio_ray_over_local": ray_epoch / local_epoch,
        "ray_fixed_startup_s": startup,
        "ray_overhead_s": overhead,
        "break_even_epochs": (overhead / (local_epoch - ray_epoch)) if local_epoch > ray_epoch else None,
    }
    rows = [
        ("backend", "steps/epoch", "epoch (median, s)", "per step (s)"),
        (f"local, 1 process x {local['threads']} threads", str(local["steps_per_epoch"]), f"{local_epoch:.2f}",
         f"{local_epoch / local['steps_per_epoch']:.2f}"),
        (f"ray, {a.workers} workers x 1 thread", str(ray["steps_per_epoch"]), f"{ray_epoch:.2f}",
         f"{ray_epoch / ray['steps_per_epoch']:.2f}"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(rows[0], widths)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in rows[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    print(f"\nepoch time ratio ray/local: {report['ratio_ray_over_local']:.2f}")
    print(f"ray fixed start-up: ray.init {t['ray_init_s']:.1f} s + fit() to first worker "
          f"{t.get('fit_to_first_worker_s', float('nan')):.1f} s = {startup:.1f} s; "
          f"whole overhead (wall {ray['wall_s']:.1f} s - training {ray['train_s']:.1f} s) = {overhead:.1f} s")
    if report["break_even_epochs"]:
        print(f"ray pays back its overhead after about {report['break_even_epochs']:.0f} epochs")
    else:
        print("ray never pays back its overhead here: its epochs are not faster")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
