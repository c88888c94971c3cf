"""Where and how the engine runs: device, mixed precision, threads, caching."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from fedseg.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp: bool
    num_workers: int = 0
    cache_rate: float = 1.0
    num_threads: int | None = None

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @staticmethod
    def create(device: str = "auto", *, amp: bool = True, num_workers: int = 0, cache_rate: float = 1.0,
               num_threads: int | None = None) -> "Runtime":
        """Resolve ``auto`` to CUDA when present; AMP is used only on CUDA (it slows CPU training)."""
        dev = resolve_device(device)
        if num_threads:
            torch.set_num_threads(num_threads)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch sizes: let cuDNN pick the fastest kernels
        return Runtime(dev, amp=amp and dev.type == "cuda", num_workers=num_workers, cache_rate=cache_rate,
                       num_threads=num_threads)

    @staticmethod
    def for_site(site, *, device: str | None = None, num_threads: int | None = None, amp: bool = True) -> "Runtime":
        """The runtime a site's YAML asks for, with optional command-line overrides."""
        return Runtime.create(device or site.device, amp=amp, num_workers=site.num_workers,
                              cache_rate=site.cache_rate, num_threads=num_threads or site.num_threads)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine (use 'auto' or 'cpu')")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch. CPU runs repeat exactly; cuDNN autotuning may vary GPU runs slightly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
