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
    cases: int  # phantoms synthesized for the single-site comparisons (60/20/20 training/validation/test)
    train_epochs: int  # timed epochs per loop in the throughput comparison (they alternate)
    warmup_epochs: int
    tutorial_workers: int  # the tutorial's CacheDataset/DataLoader workers (4 in the tutorial)
    infer_volumes: int
    infer_repeats: int  # inference runs per way (they alternate; the fastest counts)
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
    ttd_bar: float = 0.8  # time to Dice: validation Dice bar, evaluation interval and time budget
    ttd_eval_every: int = 50
    ttd_budget_s: float = 300.0
    default_sections: tuple[str, ...] = ("throughput", "inference", "aggregation", "fl_overhead", "scale", "quality")
    notes: tuple[str, ...] = ()

    def as_json(self) -> dict:
        return asdict(self)


def settings_for(mode: str) -> Settings:
    threads = max(1, min(os.cpu_count() or 1, 8))
    if mode == "quick":
        return Settings(mode, "tiny", "cpu", threads, cases=16, train_epochs=4, warmup_epochs=1, tutorial_workers=4,
                        infer_volumes=10, infer_repeats=1, infer_train_iterations=150, fl_rounds=(1, 4), fl_cases=12,
                        scale_sites=(2, 4), scale_cases_per_site=6, agg_ks=(1, 2, 4, 8, 16, 32), agg_variant="full",
                        quality_sites=2, quality_cases_per_site=6, quality_rounds=2, quality_local_epochs=1,
                        default_sections=("throughput", "inference", "aggregation", "fl_overhead"),
                        notes=("quick mode leaves out the scale and quality comparisons (about 2 more minutes; "
                               "--only scale quality runs them: scale with 2 and 4 sites, quality for 2 epochs, "
                               "a check that its pipeline runs)",))
    if mode == "full":
        return Settings(mode, "full", "auto", threads, cases=20, train_epochs=4, warmup_epochs=1, tutorial_workers=4,
                        infer_volumes=10, infer_train_iterations=300, fl_rounds=(1, 5), fl_cases=12,
                        scale_sites=(2, 4, 8), scale_cases_per_site=6, agg_ks=(1, 2, 4, 8, 16, 32), agg_variant="full",
                        quality_sites=3, quality_cases_per_site=10, quality_rounds=20, quality_local_epochs=5,
                        infer_repeats=1, ttd_bar=0.8, ttd_eval_every=50, ttd_budget_s=240.0,
                        # Under 10 minutes on one large GPU: the comparisons that a GPU changes. The
                        # FL, scale and quality comparisons run on CPUs (--only adds them).
                        default_sections=("throughput", "time_to_dice", "inference"))
    if mode == "test":  # the unit test: the machinery on the smallest sizes
        return Settings(mode, "tiny", "cpu", 2, cases=5, train_epochs=1, warmup_epochs=1, tutorial_workers=1,
                        infer_volumes=2, infer_repeats=1, infer_train_iterations=2, fl_rounds=(1, 2), fl_cases=9,
                        scale_sites=(2,), scale_cases_per_site=3, agg_ks=(1, 2), agg_variant="tiny",
                        quality_sites=2, quality_cases_per_site=3, quality_rounds=1, quality_local_epochs=1,
                        ttd_bar=0.01, ttd_eval_every=1, ttd_budget_s=0.0)
    raise ValueError(f"unknown mode {mode!r}")


def machine_info(device: str = "cpu") -> dict:
    """What the numbers were measured on."""
    import monai
    import nvflare
    import torch

    info = {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "monai": monai.__version__,
        "nvflare": nvflare.__version__,
        "device": device,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        **cpu_features(),
    }
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
        info["load_average_1min"] = round(os.getloadavg()[0], 2)  # others' work skews timings
    except (ImportError, OSError):
        pass
    return info


# /proc/cpuinfo flags that decide which kernels torch can use (vector width, bf16 and int8 hardware).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_features() -> dict:
    """The CPU's model and speed-relevant flags, torch's view of them, and what ``precision: auto`` picks."""
    from fedseg.engine.runtime import cpu_has_native_bf16, resolve_precision

    import torch

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:  # not Linux: torch's probes below still say what it uses
        pass
    return {"cpu_model": model, "cpu_flags": [f for f in SPEED_FLAGS if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": cpu_has_native_bf16(), "auto_precision_cpu": resolve_precision("auto", torch.device("cpu"))}


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
