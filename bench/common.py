"""Shared pieces of the benchmark suite: settings per mode, machine description, data, tables."""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator


@dataclass(frozen=True)
class Settings:
    """Sizes of every comparison; ``quick`` fits a few minutes on 2 CPU cores, ``full`` is for a GPU."""

    mode: str
    variant: str  # task variant: tiny (CPU) or full (the card's 96^3 recipe)
    device: str
    threads: int
    cases: int  # phantoms synthesized for the single-site comparisons
    train_iterations: int  # timed iterations per loop in the throughput comparison
    warmup_iterations: int
    repeats: int  # alternate engine/reference this many times; the best of each counts
    infer_volumes: int
    infer_train_iterations: int  # iterations trained before the inference comparison
    fl_rounds: tuple[int, ...]  # FL overhead: rounds of the two simulator runs (start-up and per-round cost)
    fl_cases: int
    scale_sites: tuple[int, ...]
    scale_cases_per_site: int
    agg_ks: tuple[int, ...]
    agg_variant: str  # network whose updates the aggregation comparison averages
    quality_sites: int
    quality_cases_per_site: int
    quality_rounds: int
    quality_local_epochs: int
    default_sections: tuple[str, ...] = ("throughput", "inference", "aggregation", "fl_overhead", "scale", "quality")
    notes: tuple[str, ...] = ()

    def as_json(self) -> dict:
        return asdict(self)


def settings_for(mode: str) -> Settings:
    threads = max(1, min(os.cpu_count() or 1, 8))
    if mode == "quick":
        return Settings(mode, "tiny", "cpu", threads, cases=10, train_iterations=16, warmup_iterations=2, repeats=3,
                        infer_volumes=3, infer_train_iterations=150, fl_rounds=(1, 3), fl_cases=12,
                        scale_sites=(2, 4), scale_cases_per_site=6, agg_ks=(1, 2, 4, 8, 16, 32), agg_variant="full",
                        quality_sites=2, quality_cases_per_site=6, quality_rounds=2, quality_local_epochs=1,
                        notes=("8 simulated sites are left out of the scale comparison in quick mode (8 site "
                               "processes on 2 cores take minutes); --full runs 2, 4 and 8",
                               "quality: 2 epochs only, a check that the pipeline runs; its Dice means "
                               "nothing yet (--full trains 20 rounds x 5 epochs)"))
    if mode == "full":
        return Settings(mode, "full", "auto", threads, cases=20, train_iterations=100, warmup_iterations=5, repeats=2,
                        infer_volumes=6, infer_train_iterations=300, fl_rounds=(1, 5), fl_cases=12,
                        scale_sites=(2, 4, 8), scale_cases_per_site=6, agg_ks=(1, 2, 4, 8, 16, 32), agg_variant="full",
                        quality_sites=3, quality_cases_per_site=10, quality_rounds=20, quality_local_epochs=5)
    if mode == "test":  # the unit test: the machinery on the smallest sizes
        return Settings(mode, "tiny", "cpu", 2, cases=5, train_iterations=2, warmup_iterations=1, repeats=1,
                        infer_volumes=1, infer_train_iterations=2, fl_rounds=(1, 2), fl_cases=9,
                        scale_sites=(2,), scale_cases_per_site=3, agg_ks=(1, 2), agg_variant="tiny",
                        quality_sites=2, quality_cases_per_site=3, quality_rounds=1, quality_local_epochs=1)
    raise ValueError(f"unknown mode {mode!r}")


def machine_info(device: str = "cpu") -> dict:
    """What the numbers were measured on."""
    import monai
    import nvflare
    import torch

    info = {
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "monai": monai.__version__,
        "nvflare": nvflare.__version__,
        "device": device,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["load_average_1min"] = round(os.getloadavg()[0], 2)  # others' work skews timings
    except (ImportError, OSError):
        pass
    return info


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def synth_dataset(root: Path, cases: int, seed: int = 1) -> Path:
    """Spleen phantoms in MSD layout under ``root`` (reused when already there with as many cases)."""
    from fedseg.data.msd import read_dataset_info
    from fedseg.data.synth import synthesize

    root = Path(root)
    if (root / "dataset.json").is_file() and read_dataset_info(root).num_training == cases:
        return root
    synthesize("spleen", root, cases, seed=seed, workers=min(2, os.cpu_count() or 1))
    return root


def single_site_items(root: Path, cases: int) -> dict[str, list[dict]]:
    """Synthesize ``cases`` phantoms, split them for one site and return its lists with absolute paths."""
    from fedseg.data.datalist import parse_datalist
    from fedseg.data.split import split_dataset

    data = synth_dataset(root, cases)
    written = split_dataset(data, 1, data / "splits", seed=0)
    datalist, report = parse_datalist(written["site-1"], data)
    report.raise_if_fatal(str(written["site-1"]), "benchmark")
    return {s: datalist.items(s) for s in ("training", "validation", "test")}


class Stopwatch:
    """Accumulates the time spent inside ``with watch:`` blocks."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0

    def __enter__(self) -> "Stopwatch":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.total += time.perf_counter() - self._start


class TimedLoader:
    """Wraps a data loader and records how long each ``next()`` waited for a batch."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.wait = Stopwatch()
        self.batches = 0
        self.samples = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        it = iter(self.loader)
        while True:
            with self.wait:
                try:
                    batch = next(it)
                except StopIteration:
                    return
            self.batches += 1
            self.samples += int(batch["image"].shape[0])
            yield batch


def markdown_table(head: list[str], rows: Iterable[list]) -> str:
    cells = [head] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "n/a" if value is None else str(value)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")
